"""issue 22: the app's write routes, their OpenAPI entries and the attack tests all come from one
table (ingest_service/app.py's WRITE_ROUTES), so none can drift from the others."""

from __future__ import annotations

from starlette.routing import Route

from ingest_service.app import OPENAPI, WRITE_ROUTES, create_app
from pixelpipe.core.settings import Settings


def test_every_route_the_app_serves_is_documented_and_every_documented_route_is_served():
    app = create_app(Settings(), "postgresql://nobody@127.0.0.1:1/none")  # nothing connects until started
    served = {(route.path, method.lower()) for route in app.app.routes if isinstance(route, Route)
              for method in route.methods if method != "HEAD"}
    documented = {(path, method) for path, item in OPENAPI["paths"].items() for method in item}
    # /i is answered before Starlette; the document does not describe itself.
    assert served - {("/openapi.json", "get")} == documented - {("/i", "get")}
    assert {path for route in WRITE_ROUTES for path in route.paths} == {
        path for path, method in served if method == "post"}


def test_a_route_documents_401_exactly_where_a_key_can_be_refused():
    for route in WRITE_ROUTES:
        refusable = route.key.required or route.key.outside_body
        for path in route.paths:
            assert ("401" in OPENAPI["paths"][path]["post"]["responses"]) == refusable, path
