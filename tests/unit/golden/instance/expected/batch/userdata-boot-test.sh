#!/bin/bash
# AMI Bakery: user data of the boot test of an image of role 'batch' (stage boot-test).
# The image's bakery-firstboot service reads the "# bakery:boot-test" lines below through IMDSv2 when it
# starts: it registers as the Chef node named here, runs the run list (from S3 unless given here) with
# chef-client --why-run unless why-run is no (every cookbook, role and attribute resolves, nothing
# converges), then the health command, and tags the result on this instance (bakery:boot-test) instead
# of sending an alert. Run list and command are base64.
# bakery:boot-test
# bakery:boot-test-node=bake-batch-boot-test-render
# bakery:boot-test-why-run=yes
# bakery:boot-test-run-list=
# bakery:boot-test-command=
ROLE='batch'
echo "bakery: boot test of role $ROLE, run by the bakery-firstboot service (log: /var/log/bakery-firstboot.log)"
