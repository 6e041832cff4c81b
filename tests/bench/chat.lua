-- wrk script for `python -m tests.bench`: a non-streamed POST /api/chat.
-- The body comes from $BENCH_BODY so that the Python harness is its only source.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
