"""serve.yaml is valid for Ray and for the application; a misspelt key is an error."""

import copy

import pytest
from pydantic import ValidationError
from ray.serve.schema import (
    DeploymentSchema,
    HTTPOptionsSchema,
    RayActorOptionsSchema,
    ServeApplicationSchema,
    ServeDeploySchema,
)

from serve.core.settings import AppSettings
from tests.conftest import serve_yaml


def unknown_keys(config: dict) -> list[str]:
    """Keys Ray's schema would silently ignore (it allows extra fields): misspellings."""
    def extra(model, data, where):  # type: ignore[no-untyped-def]
        return [f"{where}{key}" for key in data if key not in model.model_fields]

    found = extra(ServeDeploySchema, config, "")
    found += extra(HTTPOptionsSchema, config.get("http_options", {}), "http_options.")
    for app in config.get("applications", []):
        found += extra(ServeApplicationSchema, app, "applications[].")
        for deployment in app.get("deployments", []):
            found += extra(DeploymentSchema, deployment, "deployments[].")
            found += extra(RayActorOptionsSchema, deployment.get("ray_actor_options", {}), "ray_actor_options.")
    return found


def test_serve_yaml_matches_rays_schema():
    assert unknown_keys(serve_yaml()) == []
    config = ServeDeploySchema.model_validate(serve_yaml())
    app = config.applications[0]
    assert app.route_prefix == "/" and app.import_path == "serve.app:build_app"
    assert {d.name for d in app.deployments} == {"Ingress", "BufferManager", "Whisper"}


def test_a_misspelt_ray_key_fails():
    config = serve_yaml()
    config["applications"][0]["deployments"][0]["num_replica"] = 2
    assert unknown_keys(config) == ["deployments[].num_replica"]
    config["applications"][0]["deployments"][0]["num_replicas"] = "two"
    with pytest.raises(ValidationError):
        ServeDeploySchema.model_validate(config)


def test_args_validate_as_app_settings():
    settings = AppSettings.model_validate(serve_yaml()["applications"][0]["args"])
    assert settings.engine.model == "bundled-tiny.en"
    assert settings.batching.max_batch_size >= 1


@pytest.mark.parametrize(
    "path,value",
    [(("engine", "modle"), "x"), (("batching", "max_batch_size"), 0), (("streaming", "vad", "threshold"), 1.5), (("limitz",), {})],
)
def test_a_misspelt_or_out_of_range_arg_fails(path, value):
    args = copy.deepcopy(serve_yaml()["applications"][0]["args"])
    target = args
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValidationError):
        AppSettings.model_validate(args)
