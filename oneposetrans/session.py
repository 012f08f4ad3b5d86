"""What one process shares between stages: the models folder, the device, the precision, the
profile, this process's place among ``accelerate launch`` processes, and the models, each loaded
once, on first use.

The CLI and the demo build one :class:`Session` and hand it to every stage. The device is
resolved here, once (``auto`` becomes this process's own GPU under ``accelerate launch``, else
``cuda`` or ``cpu``), so no loader ever sees ``auto``.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch
from accelerate import PartialState

from oneposetrans.caption import automatic_captioner
from oneposetrans.finetune import LoraTrainer
from oneposetrans.generate import Generator, check_compilable
from oneposetrans.imagpose.checkpoint import load_pipeline
from oneposetrans.inpaint import make_inpainter
from oneposetrans.pose import PoseExtractor
from oneposetrans.profiles import Profile, profile_named
from oneposetrans.refine import Refiner
from oneposetrans.runtime import check_device_available, resolve_device, resolve_dtype
from oneposetrans.segment import PersonSegmenter
from oneposetrans.settings import FinetuneSettings

Case = TypeVar("Case")


class Session:
    def __init__(
        self,
        models: str | Path | None,
        device: str = "auto",
        dtype: str = "auto",
        profile: str | Profile = "default",
        *,
        identitynet: bool = False,
        compile: bool = False,
        inpainter: str = "lama",
        echo: Callable[[str], None] = print,
    ):
        check_device_available(device)
        # Without CUDA, PartialState only recognises a multi-process launch when told to use the CPU.
        self.state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
        self.models = Path(models) if models is not None else None
        self.device = self.state.device if device == "auto" else resolve_device(device)
        self.torch_dtype = resolve_dtype(dtype, self.device)
        self.dtype = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[self.torch_dtype]
        self.profile = profile_named(profile) if isinstance(profile, str) else profile
        self.identitynet = identitynet
        if compile:  # refused before any model loads or file is written
            check_compilable(self.profile)
        self.compile = compile
        self.inpainter_kind = inpainter
        self.echo = echo
        # The demo serves several visitors from threads: a model is built by one of them only.
        self._loading = threading.Lock()
        self._trainers: dict[tuple, object] = {}
        self._imagpose: dict[str, object] = {}

    # -- processes ----------------------------------------------------------------------------

    @property
    def process_index(self) -> int:
        return self.state.process_index

    @property
    def num_processes(self) -> int:
        return self.state.num_processes

    @property
    def is_main_process(self) -> bool:
        return self.state.is_main_process

    @property
    def prefix(self) -> str:
        """``[process i] `` before this process's lines when several run."""
        return f"[process {self.process_index}] " if self.num_processes > 1 else ""

    def shard(self, cases: Sequence[Case]) -> list[Case]:
        """This process's share: every n-th case, so processes write disjoint files."""
        return list(cases[self.process_index :: self.num_processes])

    def wait_for_everyone(self) -> None:
        self.state.wait_for_everyone()

    # -- models, each loaded once -------------------------------------------------------------

    def _load(self, what: str, build: Callable[[], object]) -> object:
        with self._loading:
            started = time.perf_counter()
            model = build()
        self.echo(f"  {self.prefix}{what} loaded in {time.perf_counter() - started:.1f} s")
        return model

    @functools.cached_property
    def segmenter(self):
        """GroundingDINO + SAM."""
        return self._load("segmentation models", lambda: PersonSegmenter(self.models, str(self.device), self.profile))

    @functools.cached_property
    def generator(self):
        """The generator: SDXL, ControlNet, the Visual Consistency Module and LayerDiffuse."""
        return self._load(
            "models", lambda: Generator(self.models, str(self.device), self.dtype, self.profile, self.identitynet, self.compile)
        )

    @functools.cached_property
    def refiner(self):
        """The refining pass, on the generator's own components."""
        return Refiner(self.generator, self.models)

    @functools.cached_property
    def inpainter(self):
        return self._load(
            "inpainter",
            lambda: make_inpainter(self.inpainter_kind, self.models, str(self.device), self.dtype, self.profile),
        )

    @functools.cached_property
    def pose_extractor(self):
        """OpenPose, for target poses given as photos."""
        return self._load("pose detector", lambda: PoseExtractor(self.models, str(self.device)))

    @functools.cached_property
    def captioner(self):
        """Gemini when a key is in the environment, else the local VLM."""
        return automatic_captioner(self.models, str(self.device))

    def imagpose(self, checkpoint: str | Path):
        """The IMAGPose pipeline of a checkpoint folder, loaded once per folder."""
        key = str(checkpoint)
        if key not in self._imagpose:
            self._imagpose[key] = self._load(
                f"IMAGPose checkpoint {checkpoint}", lambda: load_pipeline(checkpoint, self.torch_dtype).to(self.device)
            )
        return self._imagpose[key]

    def trainer(self, settings: FinetuneSettings):
        """The LoRA trainer for ``settings``: SDXL base loaded once per distinct settings."""
        key = dataclasses.astuple(settings)
        if key not in self._trainers:
            self._trainers[key] = self._load(
                "models", lambda: LoraTrainer.from_models_dir(self.models, settings, self.device, self.profile)
            )
        return self._trainers[key]
