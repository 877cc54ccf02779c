"""Typed failures. Each carries the HTTP status it is answered with; `serve.app` turns every one
into a JSON answer in the shape of the protocol the request came in (one place)."""


class ServiceError(Exception):
    """A request failure with its HTTP status, title and any headers the answer needs."""

    status = "500 Internal Server Error"
    title = "Internal Server Error"
    headers: dict[str, str] = {}  # noqa: RUF012 (read-only class default)

    def __init__(self, message: str, model: str = ""):
        super().__init__(message)
        self.model = model  # the model the failed request named, for the access log


class BadRequest(ServiceError):
    status = "400 Bad Request"
    title = "Bad request"


class InvalidModel(BadRequest):
    title = "Invalid model"


class UnknownModel(ServiceError):
    status = "404 Not Found"
    title = "Unknown model"


class UnknownVersion(UnknownModel):
    title = "Unknown model version"


class RequestTimeout(ServiceError):
    status = "408 Request Timeout"
    title = "Request timeout"
    headers = {"Connection": "close"}  # noqa: RUF012


class PayloadTooLarge(ServiceError):
    status = "413 Content Too Large"
    title = "Request too large"


class UnsupportedEncoding(ServiceError):
    status = "415 Unsupported Media Type"
    title = "Unsupported content encoding"


class InvalidCrystalData(ServiceError):
    status = "422 Unprocessable Entity"
    title = "Invalid crystal data"


class PredictionFailed(ServiceError):
    status = "500 Internal Server Error"
    title = "Prediction failed"


class ModelNotReady(ServiceError):
    status = "503 Service Unavailable"
    title = "Model not ready"


class Overloaded(ServiceError):
    status = "503 Service Unavailable"
    title = "Overloaded"
    headers = {"Retry-After": "1"}  # noqa: RUF012


class StartupError(Exception):
    """The deployment is unusable (models, checksums, labels, settings): do not start."""
