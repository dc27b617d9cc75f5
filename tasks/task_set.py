"""The held-out task set's files: `heldout_tasks.json` (the questions, their media's names, the
expected answers) and `heldout_media.zip` (PNG pictures, Ogg Opus clips), read with the standard
library alone, so eval and the demo need neither torch nor espeak-ng.

The set is bound to the model it was made for: `make-reference --trained` stamps the sha256 of
the checkpoint's config.json and tokenizer.json into it, export copies it into the artifact
(whose manifest records both), and `load_task_set` refuses a folder whose model is another one,
with a Phi4MMError that says what to do. Same config and tokenizer, other weights (a variant of
the trained model) is accepted: the questions still apply.
"""

import hashlib
import io
import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..artifact import HELDOUT_MEDIA, HELDOUT_TASKS, TOKENIZER_JSON
from ..errors import Phi4MMError
from ..manifest import MANIFEST, read_manifest
from .items import MODALITIES, Task

FORMAT = "phi4mm-edge held-out tasks"
VERSION = 1
CONFIG_JSON = "config.json"
MAKE_IT = "make the trained reference with `phi4mm-edge make-reference --trained DIR` (and export DIR)"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member dates: the same tasks make the same bytes


@dataclass
class HeldoutTask:
    """One held-out question: `messages` in the runtime's format, `images` / `audios` names of
    members of the media zip, in placeholder order."""

    id: str
    kind: str
    modality: str
    messages: list
    images: list
    audios: list
    answer: str


@dataclass
class TaskSet:
    folder: Path
    seed: int
    kinds: dict  # kind -> {"modality", "chance", "chance_note"}
    tasks: list

    def media(self, name: str) -> bytes:
        """One picture's or clip's bytes (what the runtime's images= / audios= take)."""
        with zipfile.ZipFile(self.folder / HELDOUT_MEDIA) as media:
            return media.read(name)


def write_task_set(folder: Path, tasks: list[Task], seed: int, kinds: dict) -> None:
    """Write the two files for `tasks` (made by the held-out generator with `seed`) into
    `folder`, unstamped: `stamp_model` binds them to a checkpoint."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries, counters = [], {}
    with zipfile.ZipFile(folder / HELDOUT_MEDIA, "w", zipfile.ZIP_STORED) as media:
        for task in tasks:
            number = counters[task.kind] = counters.get(task.kind, -1) + 1
            task_id = f"{task.kind}-{number:03d}"
            images = [f"{task_id}-image{i + 1}.png" for i in range(len(task.images))]
            audios = [f"{task_id}-audio{i + 1}.ogg" for i in range(len(task.audios))]
            for name, image in zip(images, task.images):
                png = io.BytesIO()
                image.save(png, format="PNG", optimize=True)
                media.writestr(zipfile.ZipInfo(name, ZIP_DATE), png.getvalue())
            for name, clip in zip(audios, task.audios):
                media.writestr(zipfile.ZipInfo(name, ZIP_DATE), clip)
            entries.append(HeldoutTask(task_id, task.kind, task.modality, [{"role": "user", "content": task.prompt}],
                                       images, audios, task.answer))
    data = {"format": FORMAT, "version": VERSION, "seed": seed, "model": None, "kinds": kinds,
            "tasks": [asdict(entry) for entry in entries]}
    (folder / HELDOUT_TASKS).write_text(json.dumps(data, indent=1) + "\n")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_fingerprint(folder: Path) -> dict:
    """{config_sha256, tokenizer_sha256} of a checkpoint folder (its files) or of an artifact
    folder (its manifest: the source checkpoint's config.json, the copied tokenizer.json)."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        manifest = read_manifest(folder)
        tokenizer = manifest.files.get(TOKENIZER_JSON)
        return {"config_sha256": manifest.source.config_sha256, "tokenizer_sha256": tokenizer and tokenizer.sha256}
    if not (folder / CONFIG_JSON).is_file() or not (folder / TOKENIZER_JSON).is_file():
        raise Phi4MMError(f"{folder} is neither a checkpoint (config.json, tokenizer.json) nor an artifact "
                          f"(manifest.json): pass the trained reference's checkpoint or artifact folder")
    return {"config_sha256": _sha256(folder / CONFIG_JSON), "tokenizer_sha256": _sha256(folder / TOKENIZER_JSON)}


def stamp_model(folder: Path, model_folder: Path | None = None) -> None:
    """Bind the task set in `folder` to the model in `model_folder` (default: the checkpoint
    beside it)."""
    path = Path(folder) / HELDOUT_TASKS
    data = json.loads(path.read_text())
    data["model"] = model_fingerprint(model_folder if model_folder is not None else folder)
    path.write_text(json.dumps(data, indent=1) + "\n")


def _refuse(folder: Path, problem: str):
    raise Phi4MMError(f"{folder}: {problem}")


def load_task_set(folder, model_folder=None) -> TaskSet:
    """The held-out task set in `folder` (a checkpoint from `make-reference --trained` or its
    export), checked against the model in `model_folder` (default: `folder` itself). Raises
    Phi4MMError when the folder has no task set, the files are damaged, or the model is not the
    one the tasks were made for."""
    folder = Path(folder)
    model_folder = Path(model_folder) if model_folder is not None else folder
    path = folder / HELDOUT_TASKS
    if not path.is_file():
        _refuse(folder, f"no held-out task set ({HELDOUT_TASKS}): this is not the trained reference model, whose "
                        f"tasks it would be; {MAKE_IT}")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
        tasks = [HeldoutTask(**entry) for entry in data["tasks"]]
        if any(t.modality not in MODALITIES or not isinstance(t.answer, str) for t in tasks):
            raise ValueError("a task has an unknown modality or a non-text answer")
        with zipfile.ZipFile(folder / HELDOUT_MEDIA) as media:
            members = set(media.namelist())
    except (OSError, ValueError, TypeError, KeyError, AttributeError, zipfile.BadZipFile) as error:
        _refuse(folder, f"the held-out task set ({HELDOUT_TASKS}, {HELDOUT_MEDIA}) is damaged ({error}); {MAKE_IT}")
    missing = [name for t in tasks for name in t.images + t.audios if name not in members]
    if missing:
        _refuse(folder, f"{HELDOUT_MEDIA} lacks {missing[0]} (and {len(missing) - 1} more); {MAKE_IT}")
    if not data.get("model"):
        _refuse(folder, "the held-out task set is not bound to a model (make-reference --trained stamps it); "
                        + MAKE_IT)
    if model_fingerprint(model_folder) != data["model"]:
        _refuse(model_folder, "this is not the trained reference model the held-out tasks were made for (its "
                              "config.json or tokenizer.json differs), so their answers do not apply; " + MAKE_IT)
    return TaskSet(folder, int(data["seed"]), data["kinds"], tasks)
