# bakery-firstboot (AMI Bakery, role 'reporting'), run at startup by Task Scheduler as SYSTEM: while
# C:\firstboot.txt exists, register this instance with Chef as ROLE-INSTANCE_ID and run the role's run
# list from S3; success removes the file, failure keeps it (the next boot retries) and sends one SNS
# alert. Log: C:\ProgramData\bakery\firstboot.log. Boot test (the user data says "# bakery:boot-test"): the
# same path with the node name, run list and why-run mode the user data gives, then its health command;
# the result is tagged on the instance (bakery:boot-test=passed|failed) instead of alerting, and
# C:\firstboot.txt stays.
$Prog = 'bakery-firstboot'
$LibRoot = if ($env:BAKERY_ROOT) { $env:BAKERY_ROOT } else { 'C:\' }
. (Join-Path $LibRoot 'ProgramData\bakery\bakery-lib.ps1')
$RunlistBucket = 'acme-bakery'
$RunlistKey = 'runlists/reporting.json'
$RunListJson = Join-Path $ChefDir 'first-boot.json'
$LogFile = Join-Path $BakeryDir 'firstboot.log'
$What = 'first boot'
$ChefTimeoutSeconds = 2700

$BootTest = $false
$BootTestNode = ''
$BootTestWhyRun = $true
$BootTestRunList = ''
$BootTestCommand = ''
function Get-UserData {
  for ($i = 1; ; $i++) {
    try {
      $r = Invoke-WebRequest -Uri "$Imds/latest/user-data" -Headers @{ 'X-aws-ec2-metadata-token' = $script:ImdsToken } -TimeoutSec 5 -UseBasicParsing
      $c = $r.Content
      if ($c -is [byte[]]) { $c = [Text.Encoding]::UTF8.GetString($c) }
      return [string]$c
    } catch {
      $resp = $_.Exception.Response
      if ($resp -and [int]$resp.StatusCode -eq 404) { return '' }
      if ($i -ge 6) { throw "cannot read the user data from ${Imds}: $($_.Exception.Message)" }
    }
    Start-Sleep -Seconds (2 * $i)
  }
}
function Get-BootTestValue([string[]]$Lines, [string]$Key) {
  $prefix = "# bakery:boot-test-$Key="
  $line = $Lines | Where-Object { $_.StartsWith($prefix) } | Select-Object -First 1
  if ($line) { $line.Substring($prefix.Length).Trim() } else { '' }
}
function ConvertFrom-Base64Text([string]$Text) {
  if ($Text) { [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($Text)) } else { '' }
}
function Read-BootTest {
  $lines = (Get-UserData) -split "`r?`n"
  if (-not ($lines | Where-Object { $_.Trim() -eq '# bakery:boot-test' })) { return }
  $script:BootTest = $true
  $script:BootTestNode = Get-BootTestValue $lines 'node'
  $script:BootTestWhyRun = (Get-BootTestValue $lines 'why-run') -ne 'no'
  $script:BootTestRunList = ConvertFrom-Base64Text (Get-BootTestValue $lines 'run-list')
  $script:BootTestCommand = ConvertFrom-Base64Text (Get-BootTestValue $lines 'command')
  if ($BootTestNode -notmatch '^[A-Za-z0-9_.:-]+$') {
    throw 'boot test: the user data names no valid Chef node (bakery:boot-test-node)'
  }
  $health = if ($BootTestCommand) { 'given' } else { 'none' }
  $list = if ($BootTestRunList) { $BootTestRunList } else { 'from S3' }
  Write-Log "boot test: Chef node $BootTestNode, why-run $BootTestWhyRun, run list $list, health command $health"
}
function Invoke-HealthCommand([string]$Command) {
  $ErrorActionPreference = 'Continue'  # its stderr lines must not become terminating errors here
  $ps = Join-Path $env:SystemRoot 'System32\WindowsPowerShell\v1.0\powershell.exe'
  $encoded = [Convert]::ToBase64String([Text.Encoding]::Unicode.GetBytes($Command))
  & $ps -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand $encoded 2>&1 | ForEach-Object { Write-Log "$_" }
  $LASTEXITCODE
}

$RetryTask = 'bakery-firstboot-retry'
$RetryCount = Join-Path $BakeryDir 'firstboot-retries'
$MaxRetries = 3
$RetryMinutes = 5
function Register-Retry {
  try { Register-RetryTask } catch { Write-Log "could not schedule a retry: $($_.Exception.Message)" }
}
function Register-RetryTask {
  $count = 1 + $(if (Test-Path $RetryCount) { [int](Get-Content -Path $RetryCount) } else { 0 })
  if ($count -gt $MaxRetries) { Write-Log "first boot failed $MaxRetries times after boot: the next boot retries"; return }
  Set-Content -Path $RetryCount -Value $count
  $ps = Join-Path $env:SystemRoot 'System32\WindowsPowerShell\v1.0\powershell.exe'
  $action = New-ScheduledTaskAction -Execute $ps -Argument "-NoProfile -NonInteractive -ExecutionPolicy Bypass -File `"$PSCommandPath`""
  $trigger = New-ScheduledTaskTrigger -Once -At ([DateTime]::Now.AddMinutes($RetryMinutes))
  $principal = New-ScheduledTaskPrincipal -UserId 'NT AUTHORITY\SYSTEM' -LogonType ServiceAccount -RunLevel Highest
  Register-ScheduledTask -TaskName $RetryTask -TaskPath '\' -Action $action -Trigger $trigger -Principal $principal -Force | Out-Null
  Write-Log "retry $count of $MaxRetries scheduled in $RetryMinutes minutes (task $RetryTask)"
}
function Clear-Retry {
  Unregister-ScheduledTask -TaskName $RetryTask -Confirm:$false -ErrorAction SilentlyContinue
  Remove-Item -Force -ErrorAction SilentlyContinue -Path $RetryCount
}

if (-not (Test-Path $Sentinel)) {
  Write-Log "no ${Sentinel}: first boot is done, nothing to do"
  exit 0
}
$mutex = New-Object System.Threading.Mutex($false, 'Global\bakery-firstboot')
try { $owned = $mutex.WaitOne(0) } catch {
  if ($_.Exception.GetBaseException() -isnot [Threading.AbandonedMutexException]) { throw }
  $owned = $true
}
if (-not $owned) {
  Write-Log 'another bakery-firstboot run is under way; not starting a second one'
  exit 0
}
$rc = 0
try {
  if (-not (Test-Path $Sentinel)) {
    Write-Log "another run removed ${Sentinel}: nothing to do"
    exit 0
  }
  Write-Log "first boot of role $Role"
  Read-Metadata
  Read-BootTest
  $node = "$Role-$InstanceId"
  $chefArgs = @('-c', $ClientRb, '-j', $RunListJson)
  $mode = ''
  if ($BootTest) {
    $What = 'boot test'
    $node = $BootTestNode
    if ($BootTestWhyRun) { $chefArgs += '--why-run'; $mode += ' --why-run' }
    if ($BootTestRunList) { $chefArgs += @('-o', $BootTestRunList); $mode += " -o $BootTestRunList" }
  }
  Install-ChefClient
  Set-Step "fetching the run list s3://$RunlistBucket/$RunlistKey"
  $aws = Get-AwsArgs $Region
  try { Invoke-AsRole 'Read-S3Object' { Read-S3Object -BucketName $RunlistBucket -Key $RunlistKey -File $RunListJson @aws | Out-Null } }
  catch { throw "the run list s3://$RunlistBucket/$RunlistKey is missing or unreadable (upload {`"run_list`": [...]} there): $($_.Exception.Message)" }
  if ($null -eq (Get-Content -Raw -Path $RunListJson | ConvertFrom-Json).run_list) {
    throw "the run list s3://$RunlistBucket/$RunlistKey has no `"run_list`" key"
  }
  Get-ValidatorKey
  Write-ClientRb $node
  Set-Step "running $ChefBin$mode as $node with the run list from s3://$RunlistBucket/$RunlistKey"
  Get-LicenseKey
  $rc = Invoke-ChefWithin $chefArgs $ChefTimeoutSeconds
  if ($rc -ne 0) { throw "$ChefBin$mode exited $rc" }
  if ($BootTest) {
    $detail = "$ChefBin$mode succeeded as $node"
    if ($BootTestCommand) {
      Set-Step 'boot test: running the health command'
      $rc = Invoke-HealthCommand $BootTestCommand
      if ($rc -ne 0) { throw "the health command exited $rc ($detail)" }
      $detail += '; health command passed'
    }
    Set-BootTestTag 'passed' $detail
    Write-Log "boot test of $node passed ($detail); $Sentinel kept"
  } else {
    Remove-Item -Force -Path $Sentinel
    Clear-Retry
    Write-Log "first boot of $node succeeded; removed $Sentinel"
  }
} catch {
  if ($rc -eq 0) { $rc = 1 }
  $reason = "$($_.Exception.Message) (step: $Step)"
  Write-Log "FAILED: $reason"
  if ($BootTest) {
    try { Set-BootTestTag 'failed' $reason } catch { Write-Log "could not tag bakery:boot-test=failed: $($_.Exception.Message)" }
  } else {
    $imageBake = 'unknown-bake'
    try { $imageBake = [string](Get-Content -Raw -Path (Join-Path $BakeryDir 'image.json') | ConvertFrom-Json).bake_id } catch { }
    $tailUri = if ($InstanceId) { Send-LogTail "$imageBake/firstboot/$InstanceId.log" } else { '' }
    Send-Alert $rc $reason "$Sentinel is kept: the first boot is retried." $tailUri
    Register-Retry
  }
} finally {
  Remove-Item -Force -ErrorAction SilentlyContinue -Path $ValidatorPem
  $mutex.ReleaseMutex()
  $mutex.Dispose()
}
exit $rc
