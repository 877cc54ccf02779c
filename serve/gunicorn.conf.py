"""gunicorn settings for production, read from the environment through serve.settings."""

from serve.settings import Settings

_settings = Settings.from_env()
_host = f"[{_settings.host}]" if ":" in _settings.host else _settings.host

wsgi_app = "serve.wsgi:application()"
bind = [f"{_host}:{_settings.port}"]
workers = _settings.workers
worker_class = "gthread"
threads = _settings.threads
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
keepalive = 5
# Each worker loads the models after the fork: onnxruntime sessions are never shared.
preload_app = False
reload = False
# No runtime control socket: replicas on one host would share its path, and images run read-only.
control_socket_disable = True
errorlog = "-"
loglevel = "info"
