"""The foundation both services stand on: settings, database access, schema and migrations with
the events_log partition lifecycle, the S3 client, tenants, errors. It imports neither service
nor anything of the command line or the embedded local stack (a contract in the tests)."""
