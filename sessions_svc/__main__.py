"""``python -m sessions_svc``: run the SessionService on its own."""

from ciq_runtime.service_main import run_service
from sessions_svc.component import build_component

if __name__ == "__main__":
    run_service(service_name="sessions", build=build_component)
