# bakery-firstboot (AMI Bakery, role 'reporting'), run at startup by Task Scheduler as SYSTEM: while
# C:\firstboot.txt exists, register this instance with Chef as ROLE-INSTANCE_ID and run the role's run
# list from S3; success removes the file, failure keeps it (the next boot retries) and sends one SNS
# alert. Log: C:\ProgramData\bakery\firstboot.log.
$Prog = 'bakery-firstboot'
$LibRoot = if ($env:BAKERY_ROOT) { $env:BAKERY_ROOT } else { 'C:\' }
. (Join-Path $LibRoot 'ProgramData\bakery\bakery-lib.ps1')
$RunlistBucket = 'acme-bakery'
$RunlistKey = 'runlists/reporting.json'
$RunListJson = Join-Path $ChefDir 'first-boot.json'
$LogFile = Join-Path $BakeryDir 'firstboot.log'
$What = 'first boot'
# Our own deadline for the Chef run (the role's bootstrap_timeout): past it the run is killed and the
# catch/finally below alert and remove the validator. The task's ExecutionTimeLimit is a later backstop.
$ChefTimeoutSeconds = 2700

if (-not (Test-Path $Sentinel)) {
  Write-Log "no ${Sentinel}: first boot is done, nothing to do"
  exit 0
}
# One run at a time: a second start steps aside (exit 0).
$mutex = New-Object System.Threading.Mutex($false, 'Global\bakery-firstboot')
try { $owned = $mutex.WaitOne(0) } catch {
  # Abandoned by a run that died: ours now.
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
  $node = "$Role-$InstanceId"
  Install-ChefClient
  Set-Step "fetching the run list s3://$RunlistBucket/$RunlistKey"
  $aws = Get-AwsArgs $Region
  try { Read-S3Object -BucketName $RunlistBucket -Key $RunlistKey -File $RunListJson @aws | Out-Null }
  catch { throw "the run list s3://$RunlistBucket/$RunlistKey is missing or unreadable (upload {`"run_list`": [...]} there): $($_.Exception.Message)" }
  if ($null -eq (Get-Content -Raw -Path $RunListJson | ConvertFrom-Json).run_list) {
    throw "the run list s3://$RunlistBucket/$RunlistKey has no `"run_list`" key"
  }
  Get-ValidatorKey
  Write-ClientRb $node
  Set-Step "running $ChefBin as $node with the run list from s3://$RunlistBucket/$RunlistKey"
  Get-LicenseKey
  $rc = Invoke-ChefWithin @('-c', $ClientRb, '-j', $RunListJson) $ChefTimeoutSeconds
  if ($rc -ne 0) { throw "$ChefBin exited $rc" }
  Remove-Item -Force -Path $Sentinel
  Write-Log "first boot of $node succeeded; removed $Sentinel"
} catch {
  if ($rc -eq 0) { $rc = 1 }
  $reason = "$($_.Exception.Message) (step: $Step)"
  Write-Log "FAILED: $reason"
  Send-Alert $rc $reason "$Sentinel is kept: the next boot retries."
} finally {
  # The validator key is only needed to register: never leave it on disk.
  Remove-Item -Force -ErrorAction SilentlyContinue -Path $ValidatorPem
  $mutex.ReleaseMutex()
  $mutex.Dispose()
}
exit $rc
