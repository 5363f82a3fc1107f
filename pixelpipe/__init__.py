"""pixelpipe: the command line and the embedded local stack (PostgreSQL, S3) that `up` starts."""
