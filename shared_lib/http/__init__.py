"""The shared HTTP / CloudEvent adapter of the function entry points: routes.py (what a
function declares), app.py (FunctionApp, the one entry point), errors.py, delivery.py
(platform deliveries), auth.py and senders.py, schemas.py (request bodies), openapi.py,
metrics.py."""
