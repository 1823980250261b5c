# AMI Bakery bake of role 'reporting', phase 2 of 2 (run by the one-shot SYSTEM task bakery-generalize
# that phase 1 starts, so outside EC2Launch v2 and after its user data script has returned): leave a
# short admin-only summary instead of the bake log, remove EC2Launch v2's copy of the user data and its
# output, tag bakery:bootstrap=generalizing, then `ec2launch sysprep --clean --shutdown` generalizes and
# shuts the instance down (the bakery images it once it is stopped). Sysprep failing tags failed.
param([int]$WaitPid = 0)
$Prog = 'bakery-generalize'
$LibRoot = if ($env:BAKERY_ROOT) { $env:BAKERY_ROOT } else { 'C:\' }
. (Join-Path $LibRoot 'ProgramData\bakery\bakery-lib.ps1')
$NodeName = 'bake-reporting-render'
$LogFile = Join-Path $BakeryDir 'bake.log'
$RebootCount = Join-Path $BakeryDir 'bake-reboots'

function Write-BakeSummary([string]$Result) {
  $reboots = if (Test-Path $RebootCount) { Get-Content -Path $RebootCount } else { '0' }
  Set-Content -Path $LogFile -Value @("AMI Bakery bake of role $Role as Chef node ${NodeName}: $Result", "reboots during the converge: $reboots", "finished $([DateTime]::UtcNow.ToString('yyyy-MM-ddTHH:mm:ssZ'))")
  Remove-Item -Force -ErrorAction SilentlyContinue -Path $RebootCount
  $systemTemp = Join-Path $Root 'Windows\System32\config\systemprofile\AppData\Local\Temp'
  Get-ChildItem -Force -ErrorAction SilentlyContinue -Path $systemTemp -Filter 'EC2Launch*' | Remove-Item -Recurse -Force -ErrorAction SilentlyContinue
}

try {
  if ($WaitPid) { Wait-Process -Id $WaitPid -Timeout 900 -ErrorAction SilentlyContinue }
  Read-Metadata
  Unregister-ScheduledTask -TaskName 'bakery-generalize' -Confirm:$false -ErrorAction SilentlyContinue
  Set-Step 'generalizing with EC2Launch v2 sysprep'
  $ec2launch = Join-Path $env:ProgramFiles 'Amazon\EC2Launch\ec2launch.exe'
  if (-not (Test-Path $ec2launch)) { throw "EC2Launch v2 not found at ${ec2launch}: the base AMI must use EC2Launch v2" }
  Set-Step 'waiting for the EC2Launch v2 agent to finish its run'
  & $ec2launch status -b | ForEach-Object { Write-Log "$_" }
  Set-Step 'generalizing with EC2Launch v2 sysprep'
  Write-BakeSummary 'converged; generalizing with sysprep'
  Remove-Item -Force -ErrorAction SilentlyContinue -Path $PSCommandPath, (Join-Path $BakeryDir 'bake.ps1')
  Set-BootstrapTag 'generalizing' "ami run list converged as $NodeName; first boot installed; sysprep started"
  & $ec2launch sysprep --clean --shutdown
  if ($LASTEXITCODE -ne 0) { throw "ec2launch sysprep exited $LASTEXITCODE" }
  Write-Log 'sysprep started: the instance shuts down when it is generalized'
} catch {
  $reason = "$($_.Exception.Message) (step: $Step)"
  Write-Log "FAILED: $reason"
  if ($InstanceId) {
    try { Set-BootstrapTag 'failed' $reason } catch { Write-Log "could not tag ${InstanceId}: $($_.Exception.Message)" }
  }
  exit 1
}
exit 0
