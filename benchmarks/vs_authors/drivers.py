"""What drives the authors' code of one method through one interface (``logits``, ``step``, ``update``,
``checkpoint_state``): ``AuthorsModel`` for a Dassl trainer, ``TipAdapterDriver`` for Tip-Adapter's plain
scripts. An entry whose repository has neither names its own driver (``AuthorsCode.driver``)."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import tempfile
import types
import warnings
from unittest import mock

import torch
import torch.nn as nn

from benchmarks.vs_authors.entry import AuthorsCode
from benchmarks.vs_authors.importing import TOP_LEVEL, authors_import_path, fp32_on_cpu, framework_method
from clipcore import backbone
from harness.checkpoint import save_authors_files
from methods.clip_lora import TEMPLATE as CLIP_LORA_TEMPLATE


def base_cfg(image_size: int) -> dict:
    """The config keys every authors' trainer reads."""
    return {
        "MODEL": {"BACKBONE": {"NAME": "ViT-B/16"}, "INIT_WEIGHTS": ""},
        "INPUT": {"SIZE": (image_size, image_size)},
        "OPTIM": {"NAME": "sgd", "LR": 0.0, "MAX_EPOCH": 20},
    }


class Cfg(types.SimpleNamespace):
    """A yacs-like node: attribute access to nested dicts; a missing key names itself."""

    @classmethod
    def of(cls, tree: dict) -> Cfg:
        return cls(**{k: cls.of(v) if isinstance(v, dict) else v for k, v in tree.items()})

    def __getattr__(self, name):
        raise AttributeError(
            f"the benchmark's config for the authors' trainer has no key {name!r}: add it to the cfg of the "
            "method's entry in benchmarks/vs_authors/adapters/"
        )


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def authors_root(entry: AuthorsCode, checkout: str, marker: str) -> str:
    """The entry's folder in ``checkout``, which must hold ``marker`` (their trainers, their main script)."""
    root = os.path.join(checkout, entry.folder)
    if not os.path.exists(os.path.join(root, marker)):
        raise FileNotFoundError(
            f"{root} has no {marker}: give a checkout of {entry.repository} "
            f"(git clone https://github.com/{entry.repository})"
        )
    return root


def openai_format_weights(clip, folder: str) -> str:
    """``clip``'s weights saved in ``folder`` in OpenAI's file format, which the authors' ``clip`` packages load."""
    weights = os.path.join(folder, "openai-format.pt")
    torch.save({k: v.detach().cpu() for k, v in clip.state_dict().items()}, weights)
    return weights


def load_their_clip(clip, folder: str):
    """The checkout's own ``clip`` package's model on ``clip``'s weights, in fp32 on the CPU (called where the
    checkout is importable: inside ``authors_import_path``)."""
    their_clip = importlib.import_module("clip")
    return their_clip.load(openai_format_weights(clip, folder), device="cpu", jit=False)[0].float().eval()


@contextlib.contextmanager
def recording_loss_and_updates(module, records: dict):
    """``module``'s ``F.cross_entropy`` and ``torch.optim.AdamW`` recording, in ``records["loss"]`` and
    ``records["grad"]``, the loss they are given and the gradients at each step; the recording AdamW leaves
    the weights as they are (like the others' learning rate 0), so each step starts from the same model."""
    functional = module.F

    def cross_entropy(logits, target, *args, **kwargs):
        loss = functional.cross_entropy(logits, target, *args, **kwargs)
        records["loss"].append(loss.detach().clone())
        return loss

    class RecordingAdamW(torch.optim.AdamW):
        @torch.no_grad()
        def step(self, closure=None):
            records["grad"].append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])

    shim = types.SimpleNamespace(**{k: getattr(functional, k) for k in dir(functional) if not k.startswith("_")})
    shim.cross_entropy = cross_entropy
    with mock.patch.object(module, "F", shim), mock.patch.object(torch.optim, "AdamW", RecordingAdamW):
        yield


class AuthorsModel:
    """The authors' trainer of one method built on ``clip``'s weights: ``logits(images)``,
    ``step(images, labels)`` (their ``forward_backward``), the update it leaves in the learned tensors'
    ``.grad`` and the state their checkpoint would hold."""

    def __init__(self, entry: AuthorsCode, checkout: str, clip, classnames: list[str]):
        self.entry, self.options = entry, {}
        root = authors_root(entry, checkout, "trainers/")
        self.workdir = tempfile.TemporaryDirectory() if entry.working_files else None
        if self.workdir is not None:
            self.options = entry.working_files(self.workdir.name, list(classnames))
        module_name, class_name = entry.trainer.split(":")
        cfg = Cfg.of(_merge(base_cfg(backbone.image_size(clip)), entry.cfg))
        methods_from_framework = {name: framework_method(checkout, spec) for name, spec in entry.framework.items()}
        with (
            tempfile.TemporaryDirectory() as tmp,
            authors_import_path(root, entry.unused_imports),
            fp32_on_cpu(),
        ):
            weights = openai_format_weights(clip, tmp)
            module = __import__(module_name, fromlist=[class_name])
            # where OpenAI's file would be, in every clip package of the checkout (TCP's trainers/clip_text,
            # DePT's clip and clip_maple; a trainer may load CLIP through another module's, as DePT's does)
            for loaded in [m for name, m in sys.modules.items() if name.split(".")[0] in TOP_LEVEL]:
                if hasattr(loaded, "_MODELS") and hasattr(loaded, "_download"):
                    loaded._download = lambda url, root=None: weights
            for name, value in entry.module_globals.items():
                setattr(module, name, value)
            trainer = object.__new__(getattr(module, class_name))
            for name, function in methods_from_framework.items():
                setattr(trainer, name, types.MethodType(function, trainer))
            trainer.cfg, trainer.device = cfg, torch.device("cpu")
            trainer.dm = types.SimpleNamespace(dataset=types.SimpleNamespace(classnames=list(classnames)))
            trainer.batch_idx, trainer.num_batches, trainer.epoch = 0, 2, 0  # not an epoch's last batch
            working = contextlib.chdir(self.workdir.name) if self.workdir else contextlib.nullcontext()
            with contextlib.redirect_stdout(io.StringIO()), working:  # they print every prompt
                trainer.build_model()
        self.trainer, self.model = trainer, trainer.model

    def checkpoint_state(self) -> dict:
        """What the authors' checkpoint of the registered module holds (our methods load this format)."""
        (module,) = self.trainer._models.values()
        return module.state_dict()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        if self.entry.before_eval is not None:
            self.entry.before_eval(self.model)
        with torch.no_grad(), fp32_on_cpu():
            return self.entry.logits(self.model(images))

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        self.model.train()
        img = list(images.unbind(1)) if self.entry.views > 1 else images  # Dassl's K_TRANSFORMS list of views
        with fp32_on_cpu():
            return self.trainer.forward_backward({"img": img, "label": labels})[self.entry.loss_key]

    def update(self) -> dict[str, torch.Tensor]:
        """The ``.grad`` of the entry's parameters of the registered module after their last step (the
        optimiser at learning rate 0 leaves it as the update it was handed)."""
        (module,) = self.trainer._models.values()
        params = dict(module.named_parameters())
        return {name: params[name].grad for name, _ in self.entry.gradients}


class TipAdapterDriver:
    """Tip-Adapter's plain scripts (no trainer, no Dassl): ``utils.py``'s ``clip_classifier`` and
    ``build_cache_model`` build the text classifier and the cache on the checkout's own ``clip`` package (loaded
    from the same weights), and ``main.py``'s ``run_tip_adapter`` / ``run_tip_adapter_F`` compute the logits, the
    loss and the update, read where their code hands them on: the logits given to ``cls_acc``, the loss given to
    ``F.cross_entropy``, the keys' gradient at AdamW's step (a recording AdamW that leaves the keys as they are,
    like the others' learning rate 0). The cache is K classes x ``shots`` random images, one augmented pass."""

    def __init__(self, entry: AuthorsCode, checkout: str, clip, classnames: list[str]):
        self.entry, self.cfg = entry, dict(entry.cfg)
        root = authors_root(entry, checkout, "main.py")
        self.tmp = tempfile.TemporaryDirectory()
        self.cfg["cache_dir"] = self.tmp.name
        size, shots = backbone.image_size(clip), self.cfg["shots"]
        generator = torch.Generator().manual_seed(1)
        images = torch.randn(len(classnames) * shots, 3, size, size, generator=generator)
        labels = torch.arange(len(classnames)).repeat(shots)
        with authors_import_path(root, entry.unused_imports), fp32_on_cpu(), contextlib.redirect_stdout(io.StringIO()):
            self.main = importlib.import_module("main")
            self.model = load_their_clip(clip, self.tmp.name)
            with torch.no_grad():
                self.clip_weights = self.main.clip_classifier(classnames, self.cfg["template"], self.model)
            batches = [(images[i : i + 64], labels[i : i + 64]) for i in range(0, len(images), 64)]
            self.keys, values = self.main.build_cache_model(self.cfg, self.model, batches)
        # their one-hot values are made fp16 by ``.half()`` (utils.py:62), which fp32_on_cpu keeps as it is: the
        # fp32 equivalent of the exact 0/1 values is float
        self.values = values.float()
        self.records: dict[str, list] = {}

    @contextlib.contextmanager
    def recording(self):
        """Their functions with ``cls_acc``, ``F.cross_entropy`` and ``torch.optim.AdamW`` recording what
        they are given; the best-epoch file their Tip-Adapter-F reloads is there from the start."""
        self.records = {"logits": [], "loss": [], "grad": []}
        records, main = self.records, self.main
        utils = main.search_hp.__globals__  # utils.py's namespace, where search_hp finds its cls_acc

        def recorded_acc(output, target, topk=1):
            """utils.py:10-15, whose ``float()`` of a one-element array NumPy 2 refuses: the same count, by
            ``.item()``."""
            records["logits"].append(output.detach().clone())
            pred = output.topk(topk, 1, True, True)[1].t()
            correct = pred.eq(target.view(1, -1).expand_as(pred))
            return 100 * correct[:topk].reshape(-1).float().sum().item() / target.shape[0]

        best = os.path.join(self.cfg["cache_dir"], f"best_F_{self.cfg['shots']}shots.pt")
        torch.save(nn.Parameter(self.keys.t().detach().clone()), best)  # as theirs saves adapter.weight
        with (
            mock.patch.object(main, "cls_acc", recorded_acc),
            mock.patch.dict(utils, cls_acc=recorded_acc),
            recording_loss_and_updates(main, records),
            fp32_on_cpu(),
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # their scheduler steps after a skipped optimiser step
            yield records

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = self.model.encode_image(images)
        return f / f.norm(dim=-1, keepdim=True)  # utils.py:83

    def checkpoint_state(self) -> dict:
        """The tensors of their files keys_<K>shots.pt, values_<K>shots.pt, best_F_<K>shots.pt (the keys
        before training) and the config's beta and alpha, under our checkpoint's names."""
        scalar = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
        return {
            "cache_keys": self.keys.detach().clone(),
            "cache_values": self.values.detach().clone(),
            "adapter_weight": self.keys.t().detach().clone(),
            "beta": scalar(self.cfg["init_beta"]),
            "alpha": scalar(self.cfg["init_alpha"]),
            "val_acc": scalar(0.0),
        }

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``run_tip_adapter``'s Tip-Adapter logits at the initial beta and alpha (main.py:37-43), the images as
        its val set (and test set, its search a single point)."""
        f = self.features(images)
        labels = torch.zeros(len(f), dtype=torch.long)
        with self.recording() as records, torch.no_grad():
            self.main.run_tip_adapter(self.cfg, self.keys, self.values, f, labels, f, labels, self.clip_weights)
        return records["logits"][1]

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One epoch of one batch of ``run_tip_adapter_F`` (main.py:85-106): its encoder forward, logits, loss
        and backward; then its test evaluation and search, on the batch's features, cost a few matrix products."""
        cfg = {**self.cfg, "train_epoch": 1}
        f = self.features(images)
        with self.recording() as records:
            self.main.run_tip_adapter_F(
                cfg, self.keys, self.values, f, labels, f, labels, self.clip_weights, self.model, [(images, labels)]
            )
        return float(records["loss"][0])

    def update(self) -> dict[str, torch.Tensor]:
        return {"adapter.weight": self.records["grad"][0][0]}


class ClipLoraDriver:
    """CLIP-LoRA's plain scripts (no trainer, no Dassl): ``loralib.utils.apply_lora`` adapts the checkout's own
    ``clip`` model (loaded from the same weights), ``lora.py``'s ``evaluate_lora`` gives the logits and ``run_lora``
    one training step (``n_iters x shots`` = 1), read where their code hands them on: the cosines given to
    ``cls_acc`` (x100, the literal scale of their training logits), the loss given to ``F.cross_entropy``, every
    adapter's gradient at AdamW's step (a recording AdamW that leaves the weights as they are, like the others'
    learning rate 0). Their B starts at zero, so that every adapter acts and learns B is drawn N(0, 0.02^2) first
    (seeded) and copied into ours with A."""

    def __init__(self, entry: AuthorsCode, checkout: str, clip, classnames: list[str]):
        self.entry, self.args = entry, types.SimpleNamespace(**entry.cfg)
        root = authors_root(entry, checkout, "lora.py")
        self.tmp = tempfile.TemporaryDirectory()
        self.dataset = types.SimpleNamespace(classnames=list(classnames), template=[CLIP_LORA_TEMPLATE])
        with authors_import_path(root, entry.unused_imports), fp32_on_cpu(), contextlib.redirect_stdout(io.StringIO()):
            self.lora = importlib.import_module("lora")
            self.model = load_their_clip(clip, self.tmp.name)
            self.lora.apply_lora(self.args, self.model)
            # their clip module and our weights in its format, kept for a fresh model of theirs after this block
            their_clip, weights = importlib.import_module("clip"), openai_format_weights(clip, self.tmp.name)
        self.fresh_model = lambda: their_clip.load(weights, device="cpu", jit=False)[0].float().eval()
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if name.endswith("w_lora_B"):
                    p.copy_(0.02 * torch.randn(p.shape, generator=generator))
        self.records: dict[str, list] = {}

    @contextlib.contextmanager
    def recording(self):
        """lora.py with ``cls_acc``, ``F.cross_entropy`` and ``torch.optim.AdamW`` recording what they are given."""
        self.records = {"logits": [], "loss": [], "grad": []}
        records, lora = self.records, self.lora

        def recorded_acc(output, target, topk=1):
            records["logits"].append(output.detach().clone())
            return 0.0

        with (
            mock.patch.object(lora, "cls_acc", recorded_acc),
            recording_loss_and_updates(lora, records),
            fp32_on_cpu(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),  # their tqdm bars
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # their CUDA autocast and GradScaler, disabled without CUDA
            yield records

    def lora_names(self) -> list[str]:
        return [name for name, _ in self.model.named_parameters() if "lora_" in name]  # get_lora_parameters' order

    def checkpoint_state(self) -> dict:
        """``loralib.utils.lora_state_dict`` of their model: our checkpoint's keys."""
        return {k: v.detach().clone() for k, v in self.lora.lora_state_dict(self.model).items()}

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        with self.recording() as records, torch.no_grad():
            self.lora.evaluate_lora(self.args, self.model, [(images, torch.zeros(len(images)))], self.dataset)
        return 100 * records["logits"][0]

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """``run_lora`` with one training step on the batch (also its zero-shot classifier, its preload of a
        one-image val and test set and its final one-image evaluation: part of their timed step)."""
        one = [(images[:1], labels[:1])]
        with self.recording() as records:
            self.lora.run_lora(self.args, self.model, 100, self.dataset, [(images, labels)], one, one)
        return float(records["loss"][0])

    def update(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.lora_names(), self.records["grad"][0], strict=True))

    def logits_from_our_file(self, ours, images: torch.Tensor) -> torch.Tensor:
        """The file a finished job of ours writes (``harness.checkpoint.save_authors_files``), read by their
        ``load_lora`` into a fresh model of theirs (A drawn anew, B zero): that model's logits."""
        with tempfile.TemporaryDirectory() as folder:
            args = types.SimpleNamespace(
                **{
                    **vars(self.args),
                    "save_path": folder,
                    "dataset": "vs_authors",
                    "seed": 1,
                    "filename": "lora_weights",
                }
            )
            spec = {"backbone": args.backbone, "dataset": args.dataset, "shots": args.shots, "seed": args.seed}
            save_authors_files(ours, os.path.join(folder, "model.pth.tar-1"), spec)
            with fp32_on_cpu(), contextlib.redirect_stdout(io.StringIO()):
                model = self.fresh_model()
                self.lora.load_lora(args, self.lora.apply_lora(args, model))
        kept, self.model = self.model, model
        try:
            return self.logits(images)
        finally:
            self.model = kept
