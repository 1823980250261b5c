"""What the bakery does with AWS's own AMI features, outside the stages that call it (one call each):

- ``base_image``: ``base_ami: resolve:ssm:/PARAMETER`` resolved to an AMI id in preflight;
- ``retire``: deprecation time and deregistration protection of the AMIs publish makes ``latest``, and
  the at-once deprecation of the ones they supersede;
- ``protection``: prune's side of it: deprecated AMIs only, and protection lifted (with AWS's cooldown)
  only from an AMI nothing points at any more;
- ``fast_launch``: Windows Fast Launch and EBS fast snapshot restore turned on by publish and off
  again before an AMI is deregistered.
"""
