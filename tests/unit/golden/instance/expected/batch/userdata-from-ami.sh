#!/bin/bash
# AMI Bakery: user data for an instance launched from a baked image of role 'batch'.
# Nothing to do here: the image's bakery-firstboot service registers the instance with Chef and
# runs the role's run list while /firstboot.txt exists (log: /var/log/bakery-firstboot.log).
ROLE='batch'
echo "bakery: the first boot of role $ROLE is run by the bakery-firstboot service (log: /var/log/bakery-firstboot.log)"
