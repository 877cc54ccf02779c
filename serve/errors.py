"""Typed failures; `serve.app` turns the HTTP ones into JSON answers in one place."""


class ServiceError(Exception):
    """A request failure with the HTTP status and title it is answered with."""

    status = "500 Internal Server Error"
    title = "Internal Server Error"


class InvalidCrystalData(ServiceError):
    status = "422 Unprocessable Entity"
    title = "Invalid crystal data"


class InvalidModel(ServiceError):
    status = "400 Bad Request"
    title = "Invalid model"


class PayloadTooLarge(ServiceError):
    status = "413 Content Too Large"
    title = "Request too large"


class ModelNotReady(ServiceError):
    status = "503 Service Unavailable"
    title = "Model not ready"


class PredictionFailed(ServiceError):
    status = "500 Internal Server Error"
    title = "Prediction failed"


class StartupError(Exception):
    """The deployment is unusable (models, checksums, labels, settings): do not start."""
