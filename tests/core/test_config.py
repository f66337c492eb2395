"""serve.yaml is valid for Ray and for the application; a misspelt key is an error."""

import copy

import pytest
import ray
import yaml
from pydantic import ValidationError
from ray.serve.schema import (
    DeploymentSchema,
    HTTPOptionsSchema,
    RayActorOptionsSchema,
    ServeApplicationSchema,
    ServeDeploySchema,
)

from serve.core.settings import AppSettings
from tests.conftest import REPO, serve_yaml


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
    assert app.route_prefix == "/" and app.import_path == "serve.deploy.app:build_app"
    assert {d.name for d in app.deployments} == {"Ingress", "BufferManager", "Whisper"}


def test_a_misspelt_ray_key_fails():
    config = serve_yaml()
    config["applications"][0]["deployments"][0]["num_replica"] = 2
    assert unknown_keys(config) == ["deployments[].num_replica"]
    config["applications"][0]["deployments"][0]["num_replicas"] = "two"
    with pytest.raises(ValidationError):
        ServeDeploySchema.model_validate(config)


def written_values(args: dict, where: str = "") -> dict[str, object]:
    """Every leaf value serve.yaml's args write, by dotted path."""
    leaves: dict[str, object] = {}
    for key, value in args.items():
        if isinstance(value, dict) and value:
            leaves.update(written_values(value, f"{where}{key}."))
        else:
            leaves[f"{where}{key}"] = value
    return leaves


def test_args_validate_as_app_settings_and_every_value_written_is_the_value_used():
    args = serve_yaml()["applications"][0]["args"]
    settings = AppSettings.model_validate(args)
    assert settings.engine.model == "bundled-tiny.en"
    # Nothing written in serve.yaml is dropped, defaulted, clamped or converted on the way in.
    used = written_values(settings.model_dump(mode="json"))
    written = written_values(args)
    assert {path: used.get(path, "<missing>") for path in written} == written


def test_batching_is_chosen_per_device_unless_written():
    from serve.core.settings import BatchOptions

    auto = BatchOptions()
    assert auto.for_device("cuda") == (64, 0.01) and auto.for_device("cpu") == (16, 0.02)
    assert BatchOptions(max_batch_size=1, batch_wait_timeout_s=0.05).for_device("cuda") == (1, 0.05)
    assert BatchOptions.model_validate({"max_batch_size": 256}).for_device("cpu")[0] == 256


@pytest.mark.parametrize(
    "path,value",
    [
        (("engine", "modle"), "x"),
        (("batching", "max_batch_size"), 0),
        (("batching", "max_batch_size"), 257),
        (("batching", "max_batch_size"), "sixteen"),
        (("batching", "batch_wait_timeout_s"), -0.01),
        (("streaming", "vad", "threshold"), 1.5),
        (("limitz",), {}),
        (("placement", "whisper_gpus"), -1),
        (("placement", "whisper_gpus"), "all"),
    ],
)
def test_a_misspelt_or_out_of_range_arg_fails(path, value):
    args = copy.deepcopy(serve_yaml()["applications"][0]["args"])
    target = args
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValidationError):
        AppSettings.model_validate(args)


def deployments() -> dict[str, dict]:
    return {d["name"]: d for d in serve_yaml()["applications"][0]["deployments"]}


def test_every_deployment_autoscales_within_its_request_cap():
    for name, deployment in deployments().items():
        scaling = deployment["autoscaling_config"]
        assert "num_replicas" not in deployment, name
        assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"], name
        assert scaling["target_ongoing_requests"] < deployment["max_ongoing_requests"], name


NODE_STREAMS = 500
"""Open streams one node (one GPU) must be able to hold with serve.yaml as written."""


def test_one_node_holds_500_streams():
    """With serve.yaml as written, nothing caps a single node below NODE_STREAMS open streams: Ingress replicas
    (several per node) times each one's stream limit, and at every hop a request cap that one stream's single call
    in flight fits in (a GPU node runs one Whisper replica, so that one takes every stream's decode)."""
    from serve.core.settings import AppSettings

    args = AppSettings.model_validate(serve_yaml()["applications"][0]["args"])
    ingress, buffers, whisper = (deployments()[name] for name in ("Ingress", "BufferManager", "Whisper"))
    per_node = ingress.get("max_replicas_per_node") or ingress["autoscaling_config"]["max_replicas"]
    assert per_node * args.limits.max_streams >= NODE_STREAMS
    assert args.limits.max_streams <= ingress["max_ongoing_requests"]  # a socket is one request for its whole life
    assert buffers["autoscaling_config"]["max_replicas"] * buffers["max_ongoing_requests"] >= NODE_STREAMS
    assert whisper["max_ongoing_requests"] >= NODE_STREAMS
    # Autoscaling reaches the room before any cap: it adds Ingress replicas at target_ongoing_requests each.
    ingress_scaling = ingress["autoscaling_config"]
    assert ingress_scaling["max_replicas"] * ingress_scaling["target_ongoing_requests"] >= NODE_STREAMS


def test_whisper_placement_comes_from_args_and_cpu_replicas_see_no_gpu():
    from serve.core.settings import PlacementOptions
    from serve.deploy.app import HIDE_GPUS, REPLICA_ENV, whisper_actor_options

    # ray_actor_options written in serve.yaml would replace what args.placement sets.
    assert "ray_actor_options" not in deployments()["Whisper"]
    # The application's runtime_env replaces the one the code gives each deployment: it must say the same.
    assert serve_yaml()["applications"][0]["runtime_env"]["env_vars"] == REPLICA_ENV
    auto = PlacementOptions()
    assert whisper_actor_options(auto, 0)["num_gpus"] == 0  # a laptop: CPU
    assert whisper_actor_options(auto, 4)["num_gpus"] == 1  # one replica per GPU
    packed = whisper_actor_options(PlacementOptions(whisper_gpus=0.25, whisper_resources={"A100": 1}), 4)
    assert packed["num_gpus"] == 0.25 and packed["resources"] == {"A100": 1}
    assert packed["runtime_env"]["env_vars"] == REPLICA_ENV and HIDE_GPUS.items() <= REPLICA_ENV.items()


def test_every_way_to_start_ray_gives_the_proxy_its_grpc_setting():
    """Serve's proxy reads PROXY_ENV from its node, never from serve.yaml: every launcher the README names sets it."""
    from serve.deploy.app import PROXY_ENV

    (name, value), = PROXY_ENV.items()
    for launcher in ("scripts/run.sh", "scripts/gpu-bench.sh"):
        assert f"export {name}={value}" in (REPO / launcher).read_text(), launcher
    assert f"{name}=${{{name}:-{value}}}" in (REPO / "scripts" / "room-bench.sh").read_text()
    assert f"ENV {name}={value}" in (REPO / "deploy" / "kuberay" / "Dockerfile").read_text()
    from tests.cluster.test_readme_cluster import readme_block, sections

    for part in sections(readme_block(REPO / "README.md")):
        if part.machine in ("head", "worker"):
            assert any(f"{name}={value}" in line and line.startswith("export ") for line in part.lines), part.machine


def test_kuberay_manifest_deploys_serve_yaml_verbatim_on_gpu_workers():
    manifest = yaml.safe_load((REPO / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    spec = manifest["spec"]
    embedded = yaml.safe_load(spec["serveConfigV2"])
    assert embedded == serve_yaml(), "deploy/kuberay/rayservice.yaml's serveConfigV2 differs from serve.yaml"
    ServeDeploySchema.model_validate(embedded)
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    (gpu,) = cluster["workerGroupSpecs"]
    container = gpu["template"]["spec"]["containers"][0]
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert gpu["rayStartParams"]["num-gpus"] == gpus == "1"
    assert gpu["maxReplicas"] == deployments()["Whisper"]["autoscaling_config"]["max_replicas"]
    serve_port = embedded["http_options"]["port"]
    assert {"containerPort": serve_port, "name": "serve"} in container["ports"]
