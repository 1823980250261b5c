"""The pipeline layer: the Jenkinsfiles linted and executed by the Groovy harness
(:mod:`support.pipeline`), job rendering against golden files, generate-jobs against the Jenkins double.
"""
