# AMI Bakery bake of role 'reporting' (EC2Launch v2), phase 1 of 2, run attached (EC2Launch v2
# waits for it): Chef runs the ami run list (nothing is started); exit 35/37 (reboot) becomes exit 3010,
# on which EC2Launch v2 reboots and runs this script again. Then the first-boot task + C:\firstboot.txt
# go in, this instance's Chef identity goes out, and phase 2 (generalize.ps1) is handed to a one-shot
# SYSTEM task: it tags bakery:bootstrap=generalizing and runs sysprep, which shuts the instance down.
# On failure: tag failed, no sysprep. No secrets here: the validator key comes from S3.
$Prog = 'bakery-bake'
$LibRoot = if ($env:BAKERY_ROOT) { $env:BAKERY_ROOT } else { 'C:\' }
$LibPath = Join-Path $LibRoot 'ProgramData\bakery\bakery-lib.ps1'
New-Item -ItemType Directory -Force -Path (Split-Path $LibPath) | Out-Null
$Utf8Bom = New-Object Text.UTF8Encoding $true
[IO.File]::WriteAllText($LibPath, @'
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
'@, $Utf8Bom)
. $LibPath
$NodeName = 'bake-reporting-render'
$BakeId = 'render'
$RunList = 'role[reporting_ami],recipe[iis::install]'
$ImageInfo = '{"bake_id":"render","bakery_version":"0.1.0","chef_node":"bake-reporting-render","release":"unreleased","role":"reporting"}'
$LogFile = Join-Path $BakeryDir 'bake.log'
$RebootCount = Join-Path $BakeryDir 'bake-reboots'

function Install-File([string]$Path, [string]$Content) {
  $dest = Join-Path $Root $Path.Substring(3)
  New-Item -ItemType Directory -Force -Path (Split-Path $dest) | Out-Null
  [IO.File]::WriteAllText($dest, $Content, $Utf8Bom)
  Write-Log "installed $dest"
}

function Send-Inventory {
  $keys = @('HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\*',
    'HKLM:\SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall\*')
  $programs = @(Get-ItemProperty -Path $keys -ErrorAction SilentlyContinue |
    Where-Object { $_.DisplayName -and $_.SystemComponent -ne 1 } |
    ForEach-Object { [ordered]@{ name = [string]$_.DisplayName; version = [string]$_.DisplayVersion
        arch = $(if ($_.PSPath -like '*WOW6432Node*') { 'x86' } else { 'x64' }) } })
  $hotfixes = @(Get-HotFix -ErrorAction SilentlyContinue | ForEach-Object { [ordered]@{ id = [string]$_.HotFixID } })
  $os = Get-CimInstance -ClassName Win32_OperatingSystem
  $doc = [ordered]@{ schema = 1; platform = 'windows'; manager = 'windows'; role = $Role; bake_id = $BakeId
    os = [ordered]@{ id = 'windows'; version_id = [string]$os.Version }; packages = $programs; hotfixes = $hotfixes }
  $aws = Get-AwsArgs $Region
  $json = $doc | ConvertTo-Json -Depth 4
  Invoke-AsRole 'Write-S3Object' { Write-S3Object -BucketName $RecordsBucket -Key "$RecordsPrefix$BakeId/inventory.json" -Content $json -ContentType 'application/json' -ServerSideEncryption AES256 @aws }
  Write-Log "package inventory ($($programs.Count) programs, $($hotfixes.Count) hotfixes) uploaded to s3://$RecordsBucket/$RecordsPrefix$BakeId/inventory.json"
}

$MaxReboots = 5
$rc = 0
try {
  Write-Log "baking role $Role as Chef node $NodeName"
  Read-Metadata
  Install-ChefClient
  Get-LicenseKey
  Get-ValidatorKey
  Write-ClientRb $NodeName -NoSelfReboot
  Set-Step "running $ChefBin with the ami run list $RunList"
  $rc = Invoke-Chef @('-c', $ClientRb, '-o', $RunList)
  if ($rc -eq 35 -or $rc -eq 37) {
    $count = 1 + $(if (Test-Path $RebootCount) { [int](Get-Content -Path $RebootCount) } else { 0 })
    if ($count -gt $MaxReboots) { throw "$ChefBin still asks for a reboot (exit $rc) after $MaxReboots reboots; giving up" }
    Set-Content -Path $RebootCount -Value $count
    Write-Log "$ChefBin exited $rc (reboot requested): exit 3010, EC2Launch v2 reboots and runs the bake again (reboot $count of at most $MaxReboots)"
    $rc = 3010
    exit 3010
  }
  if ($rc -ne 0) { throw "$ChefBin exited $rc running the ami run list $RunList" }

  Set-Step 'reporting the installed packages'
  try { Send-Inventory } catch { Write-Log "WARNING: no package inventory uploaded (the AMI gets no SBOM): $($_.Exception.Message)" }

  Set-Step 'installing the first-boot mechanism'
  Install-File 'C:\ProgramData\bakery\firstboot.ps1' @'
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
'@
  Install-File 'C:\ProgramData\bakery\register-firstboot-task.ps1' @'
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
'@
  & (Join-Path $BakeryDir 'register-firstboot-task.ps1') -ScriptPath (Join-Path $BakeryDir 'firstboot.ps1')
  [IO.File]::WriteAllText((Join-Path $BakeryDir 'image.json'), $ImageInfo)
  Set-Content -Path $Sentinel -Value 'AMI Bakery: the bakery-firstboot task registers this instance with Chef while this file exists.'
  Write-Log "created $Sentinel"

  Set-Step "removing this instance's Chef identity from the image"
  Remove-Item -Force -ErrorAction SilentlyContinue -Path $ClientPem, $ValidatorPem, $ClientRb
  Remove-Item -Recurse -Force -ErrorAction SilentlyContinue -Path @('cache', 'backup', 'local-mode-cache' | ForEach-Object { Join-Path $ChefDataDir $_ })

  Set-Step 'handing sysprep to the one-shot task bakery-generalize'
  $generalize = Join-Path $BakeryDir 'generalize.ps1'
  [IO.File]::WriteAllText($generalize, @'
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
'@, $Utf8Bom)
  $ps = Join-Path $env:SystemRoot 'System32\WindowsPowerShell\v1.0\powershell.exe'
  $action = New-ScheduledTaskAction -Execute $ps -Argument "-NoProfile -NonInteractive -ExecutionPolicy Bypass -File `"$generalize`" -WaitPid $PID"
  $principal = New-ScheduledTaskPrincipal -UserId 'NT AUTHORITY\SYSTEM' -LogonType ServiceAccount -RunLevel Highest
  Register-ScheduledTask -TaskName 'bakery-generalize' -TaskPath '\' -Action $action -Principal $principal -Force | Out-Null
  Start-ScheduledTask -TaskName 'bakery-generalize'
  Write-Log "bake of $Role converged: bakery-generalize tags generalizing and runs sysprep once this script has returned"
} catch {
  if ($rc -eq 0) { $rc = 1 }
  $reason = "$($_.Exception.Message) (step: $Step)"
  Write-Log "FAILED: $reason"
  if ($InstanceId) {
    $tailUri = Send-LogTail "$BakeId/bootstrap-log.txt"
    try { Set-BootstrapTag 'failed' $reason $tailUri } catch { Write-Log "could not tag ${InstanceId}: $($_.Exception.Message)" }
  }
} finally {
  Remove-Item -Force -ErrorAction SilentlyContinue -Path $ValidatorPem
}
exit $rc
