"""Named public files the project uses: where they come from, their sha256, and where they live on disk.

`fetch(name)` returns a local path to a verified copy:
- with `SCRATCHLM_MIRROR=DIR`, from `DIR/<asset.path>` (a folder laid out like the project's shared data mirror),
  verified but never copied or modified;
- otherwise from the cache (`SCRATCHLM_CACHE`, default `~/.cache/scratchlm`), downloading it first if needed:
  to a temporary file, with a progress line, unpacked when the public source ships an archive, verified, then
  renamed into place. A checksum mismatch deletes the download and names the asset and both hashes.

Stdlib only: this module is imported by the pure-Python tokenizer.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from scratchlm.errors import ScratchlmError


@dataclass(frozen=True)
class Asset:
    name: str
    url: str
    sha256: str
    """sha256 of the file as used (the extracted member when `member` is set)."""
    path: str
    """Relative path in the mirror folder and in the cache."""
    description: str
    member: str | None = None
    """File inside the zip/tar archive at `url`, when the public source ships an archive."""


_GPT2 = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"
_RASBT = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main"
_GLUE = "https://dl.fbaipublicfiles.com/glue/data"
_SUPERGLUE = "https://dl.fbaipublicfiles.com/glue/superglue/data/v2"

REGISTRY: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "gpt2-encoder",
            f"{_GPT2}/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
            "gpt2/encoder.json",
            "GPT-2 BPE vocabulary (token string -> id)",
        ),
        Asset(
            "gpt2-vocab",
            f"{_GPT2}/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            "gpt2/vocab.bpe",
            "GPT-2 BPE merges, in rank order",
        ),
        Asset(
            "tinyshakespeare",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            "tinyshakespeare.txt",
            "Tiny Shakespeare, 1.1 MB of plays (char-rnn)",
        ),
        Asset(
            "the-verdict",
            f"{_RASBT}/ch02/01_main-chapter-code/the-verdict.txt",
            "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
            "the-verdict.txt",
            "Edith Wharton's short story 'The Verdict' (LLMs-from-scratch, ch. 2)",
        ),
        Asset(
            "wikitext-2-valid",
            "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/valid.txt",
            "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
            "wikitext-2-valid.tokens",
            "WikiText-2 validation split (wiki.valid.tokens)",
        ),
        Asset(
            "wikitext-2-test",
            "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/test.txt",
            "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
            "wikitext-2-test.tokens",
            "WikiText-2 test split (wiki.test.tokens)",
        ),
        Asset(
            "sms-spam",
            "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
            "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
            "SMSSpamCollection.tsv",
            "UCI SMS Spam Collection: label TAB text, 5,574 messages",
            member="SMSSpamCollection",
        ),
        Asset(
            "instruction-data",
            f"{_RASBT}/ch07/01_main-chapter-code/instruction-data.json",
            "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
            "instruction-data.json",
            "1,100 Alpaca-style instruction/input/output records (LLMs-from-scratch, ch. 7)",
        ),
        Asset(
            "instruction-data-with-preference",
            f"{_RASBT}/ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",
            "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e",
            "instruction-data-with-preference.json",
            "The instruction data with chosen/rejected responses, for DPO",
        ),
        # multiple-choice eval tasks (scratchlm.eval.tasks); checksums from HF datasets' download_checksums
        Asset(
            "hellaswag-val",
            "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl",
            "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588",
            "hellaswag/hellaswag_val.jsonl",
            "HellaSwag validation split, 10,042 items (eval task hellaswag)",
        ),
        Asset(
            "hellaswag-train",
            "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_train.jsonl",
            "dae5e69249868cb9fe4e23ff925c60b66169564cfb7072d793cd7356a2b69f8d",
            "hellaswag/hellaswag_train.jsonl",
            "HellaSwag train split: the few-shot examples of eval task hellaswag",
        ),
        Asset(
            "arc-easy-test",
            "https://ai2-public-datasets.s3.amazonaws.com/arc/ARC-V1-Feb2018.zip",
            "ce32a0774b4beb1977d2c6b16dda5dd2b24fdc9c7f506882c452678676bd09be",
            "arc/ARC-Easy-Test.jsonl",
            "ARC-Easy test split, 2,376 items (eval task arc-easy; from the 680 MB release zip)",
            member="ARC-V1-Feb2018-2/ARC-Easy/ARC-Easy-Test.jsonl",
        ),
        Asset(
            "arc-challenge-test",
            "https://ai2-public-datasets.s3.amazonaws.com/arc/ARC-V1-Feb2018.zip",
            "9fa8ffb3e3a1f88cb302d53dd95aae81e39209ad9bcf974376b319d8fd35717c",
            "arc/ARC-Challenge-Test.jsonl",
            "ARC-Challenge test split, 1,172 items (eval task arc-challenge; from the 680 MB release zip)",
            member="ARC-V1-Feb2018-2/ARC-Challenge/ARC-Challenge-Test.jsonl",
        ),
        Asset(
            "mmlu",
            "https://people.eecs.berkeley.edu/~hendrycks/data.tar",
            "bec563ba4bac1d6aaf04141cd7d1605d7a5ca833e38f994051e818489592989b",
            "mmlu/data.tar",
            "MMLU (Hendrycks et al.): 57 subjects, dev/val/test CSVs in one 166 MB tar (eval task mmlu)",
        ),
        # GLUE's MRPC: no pinned GLUE zip; GLUE's download script builds it from Microsoft's
        # msr_paraphrase_train.txt and GLUE's dev ids, and so does scratchlm.data.glue (sha256: HF datasets)
        Asset("glue-mrpc-train", "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt",
              "60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89", "glue/msr_paraphrase_train.txt",
              "GLUE MRPC: Microsoft's paraphrase pairs, train + dev (4,076)"),
        Asset("glue-mrpc-dev-ids", f"{_GLUE}/mrpc_dev_ids.tsv",
              "971d7767d81b997fd9060ade0ec23c4fc31cbb226a55d1bd4a1bac474eb81dc7", "glue/mrpc_dev_ids.tsv",
              "GLUE MRPC: the 408 pair ids of GLUE's dev split"),
    ]
}

# GLUE and SuperGLUE (scratchlm.data.glue): the official per-task zips, read in place. The sha256 of each
# archive is the one Hugging Face datasets' glue / super_glue dataset_infos.json record for the same URL
# (download_checksums; TFDS's url_checksums agree for the GLUE zips).
def _benchmark_zip(suite: str, name: str, file: str, sha256: str, what: str) -> Asset:
    base, label = (_GLUE, "GLUE") if suite == "glue" else (_SUPERGLUE, "SuperGLUE")
    return Asset(f"{suite}-{name}", f"{base}/{file}", sha256, f"{suite}/{file}", f"{label} {what}")


REGISTRY.update({a.name: a for a in [
    _benchmark_zip("glue", "cola", "CoLA.zip", "f212fcd832b8f7b435fb991f101abf89f96b933ab400603bf198960dfc32cbff",
                   "CoLA: grammatical acceptability, 8,551 train / 1,043 dev"),
    _benchmark_zip("glue", "sst2", "SST-2.zip", "d67e16fb55739c1b32cdce9877596db1c127dc322d93c082281f64057c16deaa",
                   "SST-2: sentiment, 67,349 train / 872 dev"),
    _benchmark_zip("glue", "qqp", "QQP-clean.zip", "40e7c862c04eb26ee04b67fd900e76c45c6ba8e6d8fab4f8f1f8072a1a3fbae0",
                   "QQP: duplicate questions, 363,846 train / 40,430 dev"),
    _benchmark_zip("glue", "stsb", "STS-B.zip", "e60a6393de5a8b5b9bac5020a1554b54e3691f9d600b775bd131e613ac179c85",
                   "STS-B: similarity 0-5, 5,749 train / 1,500 dev"),
    _benchmark_zip("glue", "mnli", "MNLI.zip", "e7c1d896d26ed6caf700110645df426cc2d8ebf02a5ab743d5a5c68ac1c83633",
                   "MNLI: 3-way entailment, 392,702 train / 9,815 dev matched (313 MB)"),
    _benchmark_zip("glue", "qnli", "QNLIv2.zip", "e634e78627a29adaecd4f955359b22bf5e70f2cbd93b493f2d624138a0c0e5f5",
                   "QNLI: question-sentence entailment, 104,743 train / 5,463 dev"),
    _benchmark_zip("glue", "rte", "RTE.zip", "6bf86de103ecd335f3441bd43574d23fef87ecc695977a63b82d5efb206556ee",
                   "RTE (GLUE): entailment, 2,490 train / 277 dev"),
    _benchmark_zip("glue", "wnli", "WNLI.zip", "ae0e8e4d16f4d46d4a0a566ec7ecceccfd3fbfaa4a7a4b4e02848c0f2561ac46",
                   "WNLI: Winograd as entailment, 635 train / 71 dev"),
    _benchmark_zip("superglue", "boolq", "BoolQ.zip", "853fbe7922f70c59629f06a39e8d9ca440c3d740e760fd3b87a5ddf3dcba2436",
                   "BoolQ: yes/no questions on a passage, 9,427 train / 3,270 val"),
    _benchmark_zip("superglue", "cb", "CB.zip", "8d641383298d54554066ba1c93f56ae7410af75df621b90c63028806bbbbb535",
                   "CommitmentBank: 3-way entailment, 250 train / 56 val"),
    _benchmark_zip("superglue", "copa", "COPA.zip", "405906cddac74bc1e1ce8220f1107d1025b66a25ef10149d91b10bb30651125f",
                   "COPA: cause or effect of two alternatives, 400 train / 100 val"),
    _benchmark_zip("superglue", "multirc", "MultiRC.zip", "b3cd440856e72eb166b2edcd37b798455f1ebd51f2c3de64c0c2a4e1971d2737",
                   "MultiRC: true/false answer options, 27,243 train / 4,848 val options"),
    _benchmark_zip("superglue", "record", "ReCoRD.zip", "30c7b651ab21b8bf8fab986495cd1084333010e040548f861b839eec0044ac18",
                   "ReCoRD: cloze entity choice, 100,730 train / 10,000 val queries (52 MB)"),
    _benchmark_zip("superglue", "rte", "RTE.zip", "6310aab3f000424c9d0318a1ff20692e07c7f4aa15e8f17a5972ea0a35c398b9",
                   "RTE (SuperGLUE): entailment, 2,490 train / 277 val"),
    _benchmark_zip("superglue", "wic", "WiC.zip", "ee7e67f4ae9eafbf533780faa198e62167f3cda54256cdf261877be3c0e90900",
                   "WiC: same word sense?, 5,428 train / 638 val"),
    _benchmark_zip("superglue", "wsc", "WSC.zip", "2ed6dfa94556b4a128ff0441efe365b2e883124e7e6aa00fb8d3a6cb1fd520a9",
                   "WSC: pronoun coreference, 554 train / 104 val"),
]})


def get_asset(name: str) -> Asset:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ScratchlmError(
            f"unknown asset {name!r}; known assets: {', '.join(sorted(REGISTRY))} (see `scratchlm fetch --list`)"
        ) from None


def cache_dir() -> Path:
    return Path(os.environ.get("SCRATCHLM_CACHE") or Path.home() / ".cache" / "scratchlm")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_verified: dict[tuple[str, float, int], bool] = {}


def _is_verified(path: Path, expected: str) -> bool:
    st = path.stat()
    key = (str(path), st.st_mtime, st.st_size)
    if key not in _verified:
        _verified[key] = sha256_file(path) == expected
    return _verified[key]


def fetch(name: str, progress: bool = True) -> Path:
    """Return a local, checksum-verified path to the named asset (see the module docstring)."""
    asset = get_asset(name)
    mirror = os.environ.get("SCRATCHLM_MIRROR")
    if mirror:
        path = Path(mirror) / asset.path
        if not path.is_file():
            raise ScratchlmError(
                f"asset {name!r} is not in the mirror: {path} does not exist; add it there or unset SCRATCHLM_MIRROR"
            )
        if not _is_verified(path, asset.sha256):
            raise ScratchlmError(
                f"asset {name!r}: checksum mismatch for mirror file {path}: expected sha256 {asset.sha256}, "
                f"got {sha256_file(path)}; replace the file with the published one"
            )
        return path
    path = cache_dir() / asset.path
    if path.is_file() and _is_verified(path, asset.sha256):
        return path
    _download(asset, path, progress)
    return path


def _download(asset: Asset, dest: Path, progress: bool) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ScratchlmError(
            f"cannot create cache folder {dest.parent}: {e.strerror or e}; set SCRATCHLM_CACHE to a writable folder"
        ) from None
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmpdir:
        raw = Path(tmpdir) / "raw"
        try:
            _http_get(asset.url, raw, asset.name if progress else None)
        except OSError as e:
            raise ScratchlmError(
                f"could not download asset {asset.name!r} from {asset.url}: {e}; check the network, "
                f"or set SCRATCHLM_MIRROR to a folder that holds {asset.path}"
            ) from None
        got = raw if asset.member is None else _extract(raw, asset.member, Path(tmpdir) / "member")
        digest = sha256_file(got)
        if digest != asset.sha256:
            got.unlink()
            raise ScratchlmError(
                f"asset {asset.name!r}: checksum mismatch for the download from {asset.url}: expected sha256 "
                f"{asset.sha256}, got {digest}; the file was deleted, try again or use SCRATCHLM_MIRROR"
            )
        os.replace(got, dest)


def _extract(archive: Path, member: str, out: Path) -> Path:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(out, "wb") as dst:
            dst.write(src.read())
    else:
        with tarfile.open(archive) as t:
            src = t.extractfile(member)
            assert src is not None, f"{member} is not a file in {archive}"
            out.write_bytes(src.read())
    return out


def _http_get(url: str, out: Path, label: str | None) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "scratchlm"})
    with urllib.request.urlopen(req, timeout=60) as r, open(out, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0)
        done, last = 0, 0.0
        while block := r.read(1 << 16):
            f.write(block)
            done += len(block)
            now = time.monotonic()
            if label and (now - last > 0.2 or done == total):
                last = now
                pct = f"{100 * done / total:5.1f}%" if total else ""
                print(f"\r{label}: {done / 1e6:8.2f} MB {pct}", end="", file=sys.stderr, flush=True)
        if label:
            print(file=sys.stderr)
