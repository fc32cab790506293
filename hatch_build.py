"""The wheel's build hook: the prebuilt (CO-RE) BPF program goes into the
wheel, built here by scripts/build-bpf, so that a host that installs the
wheel never compiles.  Without clang the wheel is still built, without the
object (resreap then compiles with bcc at start, and says why), unless
RESREAP_REQUIRE_BPF_OBJECT=1 (packages and CI) makes that an error."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        self._tmp = tempfile.mkdtemp(prefix="resreap-bpf-")
        out = Path(self._tmp) / "resreap.bpf.o"
        run = subprocess.run([str(root / "scripts" / "build-bpf"), str(out)], cwd=root,
                             stderr=subprocess.PIPE, text=True)
        if run.returncode != 0:
            if os.environ.get("RESREAP_REQUIRE_BPF_OBJECT") == "1":
                raise RuntimeError(f"the BPF object did not build: {run.stderr.strip()}")
            self.app.display_warning(f"no prebuilt BPF object in this wheel: {run.stderr.strip()}")
            return
        build_data["force_include"][str(out)] = "resreap/bpf/resreap.bpf.o"

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        if getattr(self, "_tmp", None):
            shutil.rmtree(self._tmp, ignore_errors=True)
