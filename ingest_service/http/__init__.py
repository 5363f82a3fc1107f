"""The collector's HTTP front ends, one small module each, around the one intake core (intake.py).

pixel.py (GET /i, and the ASGI entry that refuses an address in debt before Starlette), collect.py
(/collect), sdk_routes.py (every other SDK's route, one row each), write_path.py (the order every
write route follows), operator.py (health, readiness, metrics, OpenAPI, the tracker script, the
admin port), openapi.py (the document, built from the route table), demo.py (`pixelpipe up --demo`).
"""
