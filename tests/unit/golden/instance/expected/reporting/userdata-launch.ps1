<powershell>
# AMI Bakery launch of role 'reporting' (no baked image): register with Chef as ROLE-INSTANCE_ID and
# run the launch run list; tags bakery:bootstrap, and sends one SNS alert on failure.
$Prog = 'bakery-launch'
# AMI Bakery: role 'reporting' settings + functions of the instance scripts (dot-sourced). Test seams:
# $env:BAKERY_ROOT (default C:\), $env:BAKERY_IMDS_URL, $env:AWS_ENDPOINT_URL.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
[Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
$Role = 'reporting'
$ChefServerUrl = 'https://chef.example.com/organizations/acme'
$ChefValidator = 'acme-validator'
$ValidatorBucket = 'acme-bakery'
$ValidatorKey = 'chef/validator.pem'
$ChefVersion = '18'
$ChefInstallerUrl = 'https://omnitruck.cinc.sh/install.ps1'
$ChefDistribution = 'cinc'
$ChefBin = 'cinc-client'
$ChefBinDir = 'C:\cinc-project\cinc\bin'
$ChefPreinstalled = $false
$LicenseS3 = ''
$LicenseSsm = ''
$LicenseKey = ''
$AlertTopicArn = 'arn:aws:sns:us-east-1:123456789012:bakery-alerts'
$AlertRegion = 'us-east-1'
$RecordsBucket = 'acme-bakery'
$RecordsPrefix = 'bakes/reporting/'

$Root = if ($env:BAKERY_ROOT) { $env:BAKERY_ROOT } else { 'C:\' }
$Imds = if ($env:BAKERY_IMDS_URL) { $env:BAKERY_IMDS_URL.TrimEnd('/') } else { 'http://169.254.169.254' }
if ($env:BAKERY_IMDS_URL -and -not $env:AWS_EC2_METADATA_SERVICE_ENDPOINT) {
  $env:AWS_EC2_METADATA_SERVICE_ENDPOINT = $Imds
}
$ChefDir = Join-Path $Root 'chef'
$BakeryDir = Join-Path $Root 'ProgramData\bakery'
$ClientRb = Join-Path $ChefDir 'client.rb'
$ClientPem = Join-Path $ChefDir 'client.pem'
$ValidatorPem = Join-Path $ChefDir 'validation.pem'
$Sentinel = Join-Path $Root 'firstboot.txt'
$Step = 'starting'
$InstanceId = ''
$Region = ''
$ChefDataDir = Join-Path $Root $ChefDistribution
foreach ($dir in @($ChefDir, $ChefDataDir, $BakeryDir) | Select-Object -Unique) {
  New-Item -ItemType Directory -Force -Path $dir | Out-Null
  & icacls.exe $dir /inheritance:r /grant:r '*S-1-5-18:(OI)(CI)F' '*S-1-5-32-544:(OI)(CI)F' | Out-Null
  if ($LASTEXITCODE -ne 0) { throw "icacls could not restrict $dir to SYSTEM and Administrators (exit $LASTEXITCODE)" }
}

function Write-Log([string]$Message) {
  $line = '{0} {1}: {2}' -f [DateTime]::UtcNow.ToString('yyyy-MM-ddTHH:mm:ssZ'), $Prog, $Message
  Write-Host $line
  Add-Content -Path $LogFile -Value $line
}
function Set-Step([string]$Name) {
  $script:Step = $Name
  Write-Log $Name
}
function Invoke-Retry([scriptblock]$Action) {
  for ($i = 1; ; $i++) {
    try { return (& $Action) } catch { if ($i -ge 6) { throw } }
    Start-Sleep -Seconds (2 * $i)
  }
}
$RefusedPattern = 'AccessDenied|UnauthorizedOperation|AuthorizationError|\(403\)|Forbidden|is not authorized'
function Invoke-AsRole([string]$What, [scriptblock]$Action) {
  $waited = 0
  for ($i = 1; ; $i++) {
    try { return (& $Action) }
    catch {
      $message = "$($_.Exception.Message)"
      if ($message -notmatch $RefusedPattern) { throw }
      if ($i -ge 6) { throw "$What refused for the instance role $i times over $waited s, so not for IAM propagation: its policy does not allow it ($message)" }
      Write-Log "$What refused for the instance role ($message): IAM may not have propagated its policy yet; try $($i + 1) of 6 in $(2 * $i) s"
    }
    Start-Sleep -Seconds (2 * $i)
    $waited += 2 * $i
  }
}
function Get-AwsArgs([string]$In) {
  $a = @{ Region = $In }
  if ($env:AWS_ENDPOINT_URL) { $a['EndpointUrl'] = $env:AWS_ENDPOINT_URL }
  $a
}

function Get-Imds([string]$Path) {
  Invoke-Retry { Invoke-RestMethod -Uri "$Imds/latest/$Path" -Headers @{ 'X-aws-ec2-metadata-token' = $script:ImdsToken } -TimeoutSec 5 -UseBasicParsing }
}
$ImdsWaitSeconds = 600
function Get-ImdsToken {
  $deadline = [DateTime]::UtcNow.AddSeconds($ImdsWaitSeconds)
  for ($i = 1; ; $i++) {
    try { return (Invoke-RestMethod -Method Put -Uri "$Imds/latest/api/token" -Headers @{ 'X-aws-ec2-metadata-token-ttl-seconds' = '21600' } -TimeoutSec 5 -UseBasicParsing) }
    catch { if ([DateTime]::UtcNow -ge $deadline) { throw "no IMDSv2 token from $Imds within $ImdsWaitSeconds s: $($_.Exception.Message)" } }
    Start-Sleep -Seconds ([Math]::Min(2 * $i, 15))
  }
}
function Read-Metadata {
  Set-Step "reading instance metadata from $Imds"
  $script:ImdsToken = Get-ImdsToken
  $script:InstanceId = Get-Imds 'meta-data/instance-id'
  $script:Region = Get-Imds 'meta-data/placement/region'
  Write-Log "instance $InstanceId in $Region"
  if (-not (Get-Command Read-S3Object -ErrorAction SilentlyContinue)) {
    throw 'AWS Tools for PowerShell (Read-S3Object, New-EC2Tag, Publish-SNSMessage) are not installed'
  }
}

function Set-ResultTag([string]$Key, [string]$Status, [string]$Detail, [string]$LogUri = '') {
  $d = $Detail -replace '[^\x20-\x7E]', ' '
  $d = $d.Substring(0, [Math]::Min(255, $d.Length))
  $tags = @(@{ Key = $Key; Value = $Status }, @{ Key = "$Key-detail"; Value = $d })
  if ($LogUri) { $tags += @{ Key = "$Key-log"; Value = $LogUri.Substring(0, [Math]::Min(255, $LogUri.Length)) } }
  $aws = Get-AwsArgs $Region
  Invoke-Retry { New-EC2Tag -Resource $InstanceId -Tag $tags @aws }
}
function Set-BootstrapTag([string]$Status, [string]$Detail, [string]$LogUri = '') { Set-ResultTag 'bakery:bootstrap' $Status $Detail $LogUri }
function Set-BootTestTag([string]$Status, [string]$Detail) { Set-ResultTag 'bakery:boot-test' $Status $Detail }

function ConvertTo-Scrubbed([string[]]$Lines) {
  $out = New-Object Collections.Generic.List[string]
  $inKey = $false
  foreach ($line in $Lines) {
    if ($line -match '-----BEGIN [A-Z0-9 ]*PRIVATE[ ]KEY') { $inKey = $true }
    if ($inKey) { if ($line -match '-----END [A-Z0-9 ]*PRIVATE[ ]KEY') { $inKey = $false }; continue }
    if ($line -match '^\s*[A-Za-z0-9+/=]{40,}\s*$') { continue }
    $line = $line -replace '(AKIA|ASIA)[A-Z0-9]{16}', '[removed]'
    $line = $line -replace '((password|passwd|secret|token|license_id|license[_-]?key|api_key)"?\s*[:=]\s*)[^\s&,]+', '$1[removed]'
    if ($script:LicenseKey) { $line = $line.Replace($script:LicenseKey, '[removed]') }
    $out.Add($line.Substring(0, [Math]::Min(500, $line.Length)))
  }
  $out -join "`n"
}
function Send-LogTail([string]$Name) {
  try {
    $text = ConvertTo-Scrubbed @(Get-Content -Path $LogFile -Tail 60 -ErrorAction SilentlyContinue)
    $aws = Get-AwsArgs $Region
    Invoke-AsRole 'Write-S3Object' { Write-S3Object -BucketName $RecordsBucket -Key "$RecordsPrefix$Name" -Content $text -ContentType 'text/plain' -ServerSideEncryption AES256 @aws }
    "s3://$RecordsBucket/$RecordsPrefix$Name"
  } catch { Write-Log "could not upload the log tail: $($_.Exception.Message)"; '' }
}

function Send-Alert([int]$Code, [string]$Reason, [string]$Note, [string]$TailUri = '') {
  $who = if ($InstanceId) { $InstanceId } else { 'unknown instance' }
  $subject = "bakery: $What of $Role failed on $who"
  $tail = ConvertTo-Scrubbed @(Get-Content -Path $LogFile -Tail 30 -ErrorAction SilentlyContinue)
  $uri = if ($TailUri) { $TailUri } else { 'not uploaded' }
  $body = "AMI Bakery: $What of role $Role failed.`n`nInstance:  $InstanceId`nRegion:    $Region`nExit code: $Code`nReason:    $Reason`n$Note`nLog:       $LogFile`nLog tail:  $uri`n`nLast log lines:`n$tail`n"
  $aws = Get-AwsArgs $AlertRegion
  try {
    Invoke-AsRole 'Publish-SNSMessage' { Publish-SNSMessage -TopicArn $AlertTopicArn -Subject $subject.Substring(0, [Math]::Min(100, $subject.Length)) -Message $body @aws | Out-Null }
    Write-Log "alert published to $AlertTopicArn"
  } catch {
    $why = if ("$($_.Exception.Message)" -match 'refused for the instance role') { ': the instance role may not sns:Publish to it (statement AlertOnFailure of the role''s instance policy)' } else { '' }
    Write-Log "could not publish the alert to ${AlertTopicArn}${why}: $($_.Exception.Message)"
  }
}

function Find-ChefClient {
  $c = Get-Command $ChefBin -ErrorAction SilentlyContinue
  if ($c) { return $c.Source }
  @("$ChefBinDir\$ChefBin.bat", "$ChefBinDir\$ChefBin.exe") | Where-Object { Test-Path $_ } | Select-Object -First 1
}
function Get-LicenseKey {
  if ($ChefDistribution -ne 'chef' -or $script:LicenseKey) { return }
  $aws = Get-AwsArgs $Region
  if ($LicenseS3 -match '^s3://([^/]+)/(.+)$') {
    Set-Step "fetching the Chef license key $LicenseS3"
    $tmp = Join-Path $BakeryDir 'license.tmp'  # SYSTEM and Administrators only
    try {
      $bucket, $key = $Matches[1], $Matches[2]
      Invoke-AsRole 'Read-S3Object' { Read-S3Object -BucketName $bucket -Key $key -File $tmp @aws | Out-Null }
      $script:LicenseKey = (Get-Content -Raw -Path $tmp).Trim()
    } catch { throw "cannot fetch the Chef license key $LicenseS3 with the instance role: $($_.Exception.Message)" }
    finally { Remove-Item -Force -ErrorAction SilentlyContinue -Path $tmp }
  } elseif ($LicenseSsm) {
    Set-Step "fetching the Chef license key from SSM parameter $LicenseSsm"
    try { $script:LicenseKey = (Invoke-AsRole 'Get-SSMParameterValue' { Get-SSMParameterValue -Name $LicenseSsm -WithDecryption $true @aws }).Parameters[0].Value.Trim() }
    catch { throw "cannot read the Chef license key from SSM parameter $LicenseSsm with the instance role: $($_.Exception.Message)" }
  }
}
function Install-ChefClient {
  $script:ChefClient = Find-ChefClient
  if ($ChefClient) { return }
  if ($ChefPreinstalled) { throw "chef.preinstalled is true but $ChefBin is neither on PATH nor in $ChefBinDir of the base AMI" }
  Get-LicenseKey
  Set-Step "installing $ChefDistribution client $ChefVersion with $ChefInstallerUrl"
  $url = if ($LicenseKey) { "$($ChefInstallerUrl)?license_id=$LicenseKey" } else { $ChefInstallerUrl }
  $code = Invoke-Retry { (New-Object Net.WebClient).DownloadString($url) }
  . ([scriptblock]::Create($code))
  try { install -project $ChefDistribution -version $ChefVersion }
  catch {
    if ("$($_.Exception.Message)" -notmatch '\b(3010|1641)\b') { throw }
    Write-Log "the $ChefDistribution installer reports: installed, a reboot is pending ($($_.Exception.Message))"
  }
  $script:ChefClient = Find-ChefClient
  if (-not $ChefClient) { throw "$ChefBin not found after installing" }
}

function Get-ValidatorKey {
  Set-Step "fetching the validator key s3://$ValidatorBucket/$ValidatorKey"
  $aws = Get-AwsArgs $Region
  try { Invoke-AsRole 'Read-S3Object' { Read-S3Object -BucketName $ValidatorBucket -Key $ValidatorKey -File $ValidatorPem @aws | Out-Null } }
  catch { throw "cannot fetch the validator key s3://$ValidatorBucket/$ValidatorKey with the instance role: $($_.Exception.Message)" }
  & icacls.exe $ValidatorPem /inheritance:r /grant:r '*S-1-5-18:F' '*S-1-5-32-544:F' | Out-Null
}

function ConvertTo-Rb([string]$Text) { "'" + $Text.Replace('\', '\\').Replace("'", "\'") + "'" }
function Write-ClientRb([string]$NodeName, [switch]$NoSelfReboot) {
  $rb = @(
    "chef_server_url $(ConvertTo-Rb $ChefServerUrl)"
    "node_name $(ConvertTo-Rb $NodeName)"
    "validation_client_name $(ConvertTo-Rb $ChefValidator)"
    "validation_key $(ConvertTo-Rb $ValidatorPem.Replace('\', '/'))"
    "client_key $(ConvertTo-Rb $ClientPem.Replace('\', '/'))"
    'log_location STDOUT'
  )
  if ($NoSelfReboot) {
    $rb += @(
      "require 'chef/platform/rebooter'"
      'Chef::Platform::Rebooter.singleton_class.prepend(Module.new do'
      '  def reboot!(node)'
      "    raise Chef::Exceptions::Reboot, 'AMI Bakery: reboot requested; EC2Launch v2 reboots on exit 3010'"
      '  end'
      'end)'
    )
  }
  [IO.File]::WriteAllText($ClientRb, ($rb -join "`n") + "`n")
  Write-Log "wrote $ClientRb for Chef node $NodeName"
}

function Invoke-Chef([string[]]$Arguments) {
  $ErrorActionPreference = 'Continue'  # native stderr lines must not become terminating errors
  $env:CHEF_LICENSE = 'accept-no-persist'
  if ($LicenseKey) { $env:CHEF_LICENSE_KEY = $LicenseKey }
  try { & $ChefClient @Arguments 2>&1 | ForEach-Object { Write-Log "$_" } }
  finally { Remove-Item -ErrorAction SilentlyContinue Env:CHEF_LICENSE_KEY }
  $LASTEXITCODE
}

function Invoke-ChefWithin([string[]]$Arguments, [int]$Seconds) {
  $out = Join-Path $BakeryDir 'chef-run.out'
  $quoted = $Arguments | ForEach-Object { '"' + ($_ -replace '"', '\"') + '"' }
  $env:CHEF_LICENSE = 'accept-no-persist'
  if ($LicenseKey) { $env:CHEF_LICENSE_KEY = $LicenseKey }
  try {
    $p = Start-Process -FilePath $ChefClient -ArgumentList $quoted -NoNewWindow -PassThru -RedirectStandardOutput $out -RedirectStandardError "$out.err"
  } finally { Remove-Item -ErrorAction SilentlyContinue Env:CHEF_LICENSE_KEY }
  $null = $p.Handle  # keeps the handle open: without it Windows PowerShell reports no ExitCode
  $done = $p.WaitForExit($Seconds * 1000)
  if (-not $done) {
    & taskkill.exe /PID $p.Id /T /F 2>&1 | ForEach-Object { Write-Log "$_" }
  }
  Get-Content -ErrorAction SilentlyContinue -Path $out, "$out.err" | ForEach-Object { Write-Log "$_" }
  Remove-Item -Force -ErrorAction SilentlyContinue -Path $out, "$out.err"
  if (-not $done) { throw "$ChefBin did not finish within $([int]($Seconds / 60)) minutes: its process tree was killed" }
  $p.ExitCode
}
$RunListDoc = '{"run_list":["recipe[roles::reporting_launch]"]}'
$RunListJson = Join-Path $ChefDir 'first-boot.json'
$LogFile = Join-Path $BakeryDir 'launch.log'
$What = 'launch'

$rc = 0
try {
  Write-Log "launching role $Role"
  Read-Metadata
  $node = "$Role-$InstanceId"
  Install-ChefClient
  Get-ValidatorKey
  Write-ClientRb $node
  [IO.File]::WriteAllText($RunListJson, $RunListDoc)
  Set-Step "running $ChefBin as $node with the launch run list"
  Get-LicenseKey
  $rc = Invoke-Chef @('-c', $ClientRb, '-j', $RunListJson)
  if ($rc -ne 0) { throw "$ChefBin exited $rc" }
  # Tagging needs ec2:CreateTags on the instance role; the launch has succeeded either way.
  try { Set-BootstrapTag 'succeeded' "launch run list converged as $node" } catch { Write-Log "could not tag ${InstanceId}: $($_.Exception.Message)" }
  Write-Log "launch of $Role succeeded as Chef node $node"
} catch {
  if ($rc -eq 0) { $rc = 1 }
  $reason = "$($_.Exception.Message) (step: $Step)"
  Write-Log "FAILED: $reason"
  Send-Alert $rc $reason ''
  if ($InstanceId) {
    try { Set-BootstrapTag 'failed' $reason } catch { Write-Log "could not tag ${InstanceId}: $($_.Exception.Message)" }
  }
} finally {
  Remove-Item -Force -ErrorAction SilentlyContinue -Path $ValidatorPem
}
exit $rc
</powershell>
