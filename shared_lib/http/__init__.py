"""The shared HTTP / CloudEvent adapter of the function entry points."""

from shared_lib.http.app import Call, FunctionApp, HttpError, Reply, Route, outcome_metric

__all__ = ["Call", "FunctionApp", "HttpError", "Reply", "Route", "outcome_metric"]
