"""Saliency backends behind one interface (paper Sec. 3.1 uses DeepGaze IIE; its weights are not offline).

Each backend maps a BGR frame to a non-negative float32 map at a working resolution (`work_width`
pixels wide, the frame's aspect kept): croppers only need the map's mass distribution, and the static
OpenCV methods resize internally anyway (spectral residual works at 64x64), so full-resolution maps
would only cost time (and a clip's maps are what the crop pipeline keeps in memory: at 160 px wide a
map is about 1/50 of a 720p frame). A map without any mass (the first frames of motion saliency, a
black frame) becomes uniform, so its centroid is the frame centre rather than undefined.
`stream` maps frames as they come (a network backend batches them), so a clip is never held whole.
"""

from __future__ import annotations

import contextlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from common.errors import UserError


class SaliencyModel(ABC):
    """Frame -> saliency map. Stateful backends (motion) are `reset()` before each clip."""

    name: str = "saliency"
    uses_color: bool = False  # grey backends get a grey working frame: converting before the resize is 6x cheaper

    def __init__(self, work_width: int = 160) -> None:
        if work_width < 16:
            raise UserError(f"saliency.work_width={work_width} must be >= 16 pixels")
        self.work_width = int(work_width)

    def reset(self) -> None:  # noqa: B027  (an optional hook: stateless backends keep this no-op)
        """Forget state from the previous clip."""

    def resize(self, frame: np.ndarray) -> np.ndarray:
        """The frame at working width (grey unless the backend `uses_color`)."""
        if frame.ndim == 3 and not self.uses_color:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        height, width = frame.shape[:2]
        if width <= self.work_width:
            return frame
        return cv2.resize(frame, (self.work_width, max(1, round(height * self.work_width / width))), interpolation=cv2.INTER_AREA)

    @abstractmethod
    def _compute(self, small: np.ndarray) -> np.ndarray:
        """The raw map of a frame already at working size."""

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        small = self.resize(frame)
        return _distribution(self._compute(small), small.shape[:2], _is_constant(small))

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Maps of a clip's frames in order, each summing to 1, computed as the frames come."""
        self.reset()
        for frame in frames:
            yield self(frame)

    def maps(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Maps of a clip's frames, (T, h, w), each summing to 1."""
        return np.stack(list(self.stream(frames)))


def _is_constant(image: np.ndarray) -> bool:
    """A frame of one value has no salient place (spectral residual returns noise for it)."""
    low, high = (image.min(), image.max()) if image.ndim == 3 else cv2.minMaxLoc(image)[:2]  # one pass on grey
    return bool(low == high)


def _distribution(raw: np.ndarray, shape: tuple[int, int], constant: bool = False) -> np.ndarray:
    """`raw` at `shape` (h, w) as a float32 distribution: negatives and NaN dropped, summing to 1; uniform
    when it has no mass or the frame was constant."""
    raw = np.zeros(shape, np.float32) if constant else np.array(raw, dtype=np.float32)  # a private copy: cleaned in place
    if raw.shape != tuple(shape):
        raw = cv2.resize(raw, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    np.nan_to_num(np.maximum(raw, 0.0, out=raw), copy=False)
    total = float(raw.sum())
    if total > 0:
        raw /= total
        return raw
    return np.full(raw.shape, 1.0 / raw.size, dtype=np.float32)


def _saliency_module():
    if not hasattr(cv2, "saliency"):
        raise UserError(
            "cv2.saliency is missing: install opencv-contrib-python-headless (the plain opencv-python wheel lacks it)"
        )
    return cv2.saliency


class SpectralResidualSaliency(SaliencyModel):
    """Hou & Zhang (CVPR 2007): log-spectrum minus its local average, back to the image domain."""

    name = "spectral_residual"

    def __init__(self, work_width: int = 160) -> None:
        super().__init__(work_width)
        self._model = _saliency_module().StaticSaliencySpectralResidual_create()

    def _compute(self, small: np.ndarray) -> np.ndarray:
        ok, saliency = self._model.computeSaliency(small)
        return saliency if ok else np.zeros(small.shape[:2], np.float32)


class FineGrainedSaliency(SaliencyModel):
    """Montabone & Soto (2010): centre-surround differences on integral images (OpenCV contrib)."""

    name = "fine_grained"

    def __init__(self, work_width: int = 160) -> None:
        super().__init__(work_width)
        self._model = _saliency_module().StaticSaliencyFineGrained_create()

    def _compute(self, small: np.ndarray) -> np.ndarray:
        ok, saliency = self._model.computeSaliency(small)
        return saliency if ok else np.zeros(small.shape[:2], np.float32)


class MotionSaliency(SaliencyModel):
    """Moving pixels are salient. `method=difference`: |frame - running-average background| (rate
    `background_rate`), blurred; informative from the second frame. `method=binwang`: OpenCV contrib's
    Wang & Dudek (2014) background subtraction, which marks every pixel as foreground for its first
    ~50 frames (treated here as no information) and so suits long clips only. Empty maps become
    uniform; `static_mix` blends in spectral residual so still scenes keep a meaningful centroid."""

    name = "motion"
    METHODS = ("difference", "binwang")

    def __init__(
        self, work_width: int = 160, static_mix: float = 0.0, method: str = "difference", background_rate: float = 0.1
    ) -> None:
        super().__init__(work_width)
        if not 0.0 <= static_mix <= 1.0:
            raise UserError(f"saliency.static_mix={static_mix} must be in [0, 1]")
        if method not in self.METHODS:
            raise UserError(f"saliency.method={method!r} must be one of {self.METHODS}")
        if not 0.0 < background_rate <= 1.0:
            raise UserError(f"saliency.background_rate={background_rate} must be in (0, 1]")
        self.static_mix, self.method, self.background_rate = float(static_mix), method, float(background_rate)
        self._static = SpectralResidualSaliency(work_width) if static_mix > 0 else None
        self.reset()

    def reset(self) -> None:
        self._model, self._background = None, None

    def _motion(self, gray: np.ndarray) -> np.ndarray:
        if self.method == "difference":
            if self._background is None or self._background.shape != gray.shape:
                self._background = gray.copy()
                return np.zeros_like(gray)
            motion = cv2.GaussianBlur(np.abs(gray - self._background), (0, 0), 1.5)
            self._background += self.background_rate * (gray - self._background)
            motion[motion < 0.1 * motion.max()] = 0.0  # keep the moving parts, not sensor noise
            return motion
        if self._model is None:
            self._model = _saliency_module().MotionSaliencyBinWangApr2014_create()
            self._model.setImagesize(gray.shape[1], gray.shape[0])
            self._model.init()
        ok, motion = self._model.computeSaliency(gray)  # needs float32 input; uint8 gives empty maps
        motion = np.asarray(motion, np.float32) if ok else np.zeros(gray.shape, np.float32)
        return np.zeros_like(motion) if motion.min() > 0 else motion  # all foreground = still learning

    def _compute(self, small: np.ndarray) -> np.ndarray:
        gray = (cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small).astype(np.float32)
        motion = self._motion(gray)
        if self._static is None:
            return motion
        static = self._static(small)
        motion_total = float(motion.sum())
        motion = motion / motion_total if motion_total > 0 else np.zeros_like(motion)
        return (1 - self.static_mix) * motion + self.static_mix * static


class _DownloadRefused(Exception):
    """A file torch.hub would have fetched while downloads are off."""

    def __init__(self, url: str, destination: str) -> None:
        super().__init__(url, destination)
        self.url, self.destination = url, destination


@contextlib.contextmanager
def _torch_hub_offline() -> Iterator[None]:
    """Refuse every torch.hub fetch (weights by URL, a GitHub repo of model code, GitHub's API check of it)
    instead of downloading: files already in the hub cache still load."""
    import torch.hub

    def refuse(url: Any, destination: Any = "", *args: Any, **kwargs: Any) -> None:
        address = getattr(url, "full_url", url)
        raise _DownloadRefused(str(address), str(destination) or str(address))

    saved = {name: getattr(torch.hub, name) for name in ("download_url_to_file", "urlopen") if hasattr(torch.hub, name)}
    for name in saved:
        setattr(torch.hub, name, refuse)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.hub, name, function)


def centerbias_log_density(template: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """A centre-bias log density for an input of (height, width): the template (a log density over any
    size, e.g. the 1024x1024 MIT1003 one) resized by nearest neighbour and renormalised, as DeepGaze's
    own example does; None = uniform (zeros, renormalised)."""
    from scipy.ndimage import zoom
    from scipy.special import logsumexp

    if template is None:
        return np.full((height, width), -np.log(height * width), dtype=np.float32)
    bias = zoom(template, (height / template.shape[0], width / template.shape[1]), order=0, mode="nearest")
    return (bias - logsumexp(bias)).astype(np.float32)


class DeepGazeIIESaliency(SaliencyModel):
    """DeepGaze IIE (Linardos et al. 2021), the paper's backend: only with the `deepgaze_pytorch` package
    (it needs torchvision) and its weights in the torch.hub cache, neither offline here.

    - Resolution: the model was trained on MIT1003 (images mostly 1024 px on the longer side, 35 px per
      degree), so every frame goes in at `input_long_side` px on its longer side (up- or downscaled),
      whatever the video's size; the density it returns is area-resized to the working width, as every
      backend's map.
    - Centre bias: the model adds a centre-bias log density to its own before normalising (it was trained
      with MIT1003's). `centerbias=null` gives it a uniform one: maps from the image alone. A path to a
      template (`centerbias_mit1003.npy` from DeepGaze's releases, a 1024x1024 log density) gives the
      model as trained: maps pulled towards the frame centre, so saliency crops move towards the centre
      control, and the comparison with it says less.
    - Batches: `batch_size` frames per forward pass (a clip's frames share one size).
    - Weights: `DeepGazeIIE(pretrained=True)` fetches its own weights and its four backbones' through
      torch.hub; a file not in the hub cache stops the run in one line naming it, unless `download=true`.
    """

    name = "deepgaze_iie"
    uses_color = True

    def __init__(
        self,
        work_width: int = 160,
        input_long_side: int = 1024,
        batch_size: int = 4,
        centerbias: str | None = None,
        download: bool = False,
        device: str = "cpu",
    ) -> None:
        super().__init__(work_width)
        if int(input_long_side) < 32:
            raise UserError(f"saliency.model.input_long_side={input_long_side} must be >= 32 pixels (trained at 1024)")
        if int(batch_size) < 1:
            raise UserError(f"saliency.model.batch_size={batch_size} must be >= 1")
        self.input_long_side, self.batch_size, self.device = int(input_long_side), int(batch_size), device
        self.template = self._load_centerbias(centerbias)
        self._bias: dict[tuple[int, int], Any] = {}
        if importlib.util.find_spec("deepgaze_pytorch") is None:
            raise UserError(
                "saliency=deepgaze needs the deepgaze_pytorch package and its weights "
                "(pip install git+https://github.com/matthias-k/DeepGaze, with torchvision); "
                "use saliency=spectral_residual offline"
            )
        import torch

        self._torch = torch
        self._model = self._load(download).to(device).eval()

    @staticmethod
    def _load_centerbias(path: str | None) -> np.ndarray | None:
        if path is None:
            return None
        file = Path(str(path)).expanduser()
        try:
            template = np.load(file)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"saliency.model.centerbias={path}: not a readable .npy log density ({exc.__class__.__name__}); "
                "download centerbias_mit1003.npy from the DeepGaze releases, or set null for a uniform centre bias"
            ) from None
        if template.ndim != 2 or not np.isfinite(template).all():
            raise UserError(f"saliency.model.centerbias={path}: must be a 2-D finite log density, got shape {template.shape}")
        return template.astype(np.float64)

    def _load(self, download: bool) -> Any:
        """The pretrained network; without `download`, only from files already in the torch.hub cache."""
        import torch.hub

        try:
            import deepgaze_pytorch

            with contextlib.nullcontext() if download else _torch_hub_offline():
                return deepgaze_pytorch.DeepGazeIIE(pretrained=True)
        except _DownloadRefused as missing:
            raise UserError(
                f"saliency=deepgaze: DeepGaze IIE's weights are not present ({missing.destination} from {missing.url} "
                f"is missing); run once with saliency.model.download=true (needs network; into {torch.hub.get_dir()}, "
                "which TORCH_HOME moves), or copy the files there"
            ) from None
        except Exception as exc:  # torchvision missing, a download that failed
            raise UserError(
                f"saliency=deepgaze: DeepGaze IIE could not be loaded ({exc.__class__.__name__}: {exc}); "
                "use saliency=spectral_residual"
            ) from None

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the network's input for a frame of (height, width): the longer side at `input_long_side`."""
        scale = self.input_long_side / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def _work_shape(self, height: int, width: int) -> tuple[int, int]:
        if width <= self.work_width:
            return height, width
        return max(1, round(height * self.work_width / width)), self.work_width

    def _compute(self, small: np.ndarray) -> np.ndarray:  # frames go through `stream`, at the network's size
        raise NotImplementedError

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self._batch([frame])[0]

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Maps in order, `batch_size` frames per forward pass."""
        self.reset()
        batch: list[np.ndarray] = []
        for frame in frames:
            batch.append(frame)
            if len(batch) == self.batch_size:
                yield from self._batch(batch)
                batch = []
        if batch:
            yield from self._batch(batch)

    def _batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        height, width = frames[0].shape[:2]
        size = self.input_size(height, width)
        interpolation = cv2.INTER_AREA if size[0] < height else cv2.INTER_LINEAR
        inputs = np.stack(
            [cv2.cvtColor(cv2.resize(f, (size[1], size[0]), interpolation=interpolation), cv2.COLOR_BGR2RGB) for f in frames]
        )
        if size not in self._bias:
            self._bias[size] = torch.from_numpy(centerbias_log_density(self.template, *size)).to(self.device)
        image = torch.from_numpy(inputs).permute(0, 3, 1, 2).float().to(self.device)  # RGB 0-255: the model normalises
        with torch.inference_mode():
            log_density = self._model(image, self._bias[size].expand(len(frames), *size))
        density = log_density.exp()[:, 0].float().cpu().numpy()
        shape = self._work_shape(height, width)
        return [
            _distribution(cv2.resize(d, (shape[1], shape[0]), interpolation=cv2.INTER_AREA), shape, _is_constant(x))
            for d, x in zip(density, inputs)
        ]
