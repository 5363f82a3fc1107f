"""`erase_visitor_job`: an erasure run in Dagster, from a request `pixelpipe erase --in-dagster`
stored; the erasure itself is pipeline/erasure.py."""

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from pipeline.erasure import erase_request
from pipeline.resources import PipelineSettings, PostgresResource
from pixelpipe.core.errors import PixelpipeError


class ErasureRequest(dg.Config):
    """A reference to a stored request, never the visitor id itself: Dagster keeps run config."""

    request_id: int = Field(description="the id of a pending request in erasure_requests, as "
                            "`pixelpipe erase --in-dagster` prints it")


@dg.op(name="erase_visitor", description="Remove one visitor of one site from events_log, the dead "
       "letter and every exported hour's files and receipts in both buckets; recorded in `erasures`. "
       "The visitor comes from a stored request (erasure_requests), deleted when done.")
def erase_visitor_op(context: dg.OpExecutionContext, config: ErasureRequest, postgres: PostgresResource,
                     s3: S3Resource, settings: PipelineSettings) -> dg.Output[int]:
    with postgres.get_connection(autocommit=True) as conn:
        try:
            erasure = erase_request(conn, s3.get_client(), settings, config.request_id)
        except PixelpipeError as error:
            raise dg.Failure(description=str(error)) from None
    context.log.info(f"erasure {erasure.erasure_id}: {erasure.rows_in_database} rows from events_log, "
                     f"{erasure.rows_in_files} from the files of {len(erasure.hours_rewritten)} hours")
    return dg.Output(erasure.erasure_id, metadata={"erasure_id": erasure.erasure_id, "site": erasure.site,
            "rows_in_database": erasure.rows_in_database, "rows_in_files": erasure.rows_in_files,
            "dead_letters": erasure.dead_letters, "hours_rewritten": len(erasure.hours_rewritten),
            "statements_reissued": erasure.statements_reissued})


@dg.job(name="erase_visitor_job", description="Erase one visitor of one site: config `request_id`, a request "
        "stored by `pixelpipe erase --site S --visitor V --reason R --in-dagster`.")
def erase_visitor_job():
    erase_visitor_op()
