<powershell>
# AMI Bakery: user data for an instance launched from a baked image of role 'reporting'.
# Nothing to do here: the image's bakery-firstboot startup task registers the instance with Chef and runs
# the role's run list while C:\firstboot.txt exists (log: C:\ProgramData\bakery\firstboot.log).
Write-Host ('bakery: the first boot of role {0} is run by the bakery-firstboot startup task' -f 'reporting')
</powershell>
