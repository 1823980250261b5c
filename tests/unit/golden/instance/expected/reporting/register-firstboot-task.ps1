# AMI Bakery (role 'reporting'): register the scheduled task that runs bakery-firstboot at every
# startup as SYSTEM with highest privileges. Idempotent: an existing task of that name is replaced.
param([string]$ScriptPath = 'C:\ProgramData\bakery\firstboot.ps1')
$ErrorActionPreference = 'Stop'
$ps = Join-Path $env:SystemRoot 'System32\WindowsPowerShell\v1.0\powershell.exe'
$action = New-ScheduledTaskAction -Execute $ps -Argument "-NoProfile -NonInteractive -ExecutionPolicy Bypass -File `"$ScriptPath`""
$trigger = New-ScheduledTaskTrigger -AtStartup
$principal = New-ScheduledTaskPrincipal -UserId 'NT AUTHORITY\SYSTEM' -LogonType ServiceAccount -RunLevel Highest
# A backstop only: firstboot.ps1 ends a hung Chef run itself after 2700 s (and alerts,
$settings = New-ScheduledTaskSettingsSet -StartWhenAvailable -MultipleInstances IgnoreNew -ExecutionTimeLimit (New-TimeSpan -Seconds 4500) -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries -RestartCount 3 -RestartInterval (New-TimeSpan -Minutes 5)
Register-ScheduledTask -TaskName 'bakery-firstboot' -TaskPath '\' -Action $action -Trigger $trigger -Principal $principal -Settings $settings -Description 'AMI Bakery first boot: Chef registration and run list while C:\firstboot.txt exists' -Force | Out-Null
Write-Host "registered the startup task bakery-firstboot ($ScriptPath as SYSTEM)"
