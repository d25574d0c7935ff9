"""``python -m sessions_svc``: run the SessionService and the ApiKeyService on their own."""

from ciq_runtime.service_main import ProcessParts, run_service
from ciq_runtime.settings import Settings
from sessions_svc.apikeys.component import build_apikeys
from sessions_svc.component import build_component


def _parts(settings: Settings) -> ProcessParts:
    keys = build_apikeys(settings)
    return ProcessParts([keys.component, build_component(settings)], api_keys=keys.verifier)


if __name__ == "__main__":
    run_service(service_name="sessions", build=_parts)
