"""Regenerate the data shipped in ``dreamprm_trl/data/`` from the developers' shared data folder.

    python benchmarks/make_bundled_data.py [--shared ../shared/data] [--humaneval-samples 20]

Writes byte-reproducible gzip files (mtime 0) and prints their sizes. Sources and licences:
``dreamprm_trl/data/README.md``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
from pathlib import Path

from dreamprm_trl.steps import extract_code

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "dreamprm_trl" / "data"
CLASSEVAL_FIELDS = (
    "task_id",
    "class_name",
    "class_description",
    "skeleton",
    "import_statement",
    "test",
    "test_classes",
    "solution_code",
)


def read_gz_json(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f) if path.name.endswith(".json.gz") else [json.loads(line) for line in f if line.strip()]


def write_gz(path: Path, text: str) -> None:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as f:
        f.write(text.encode("utf-8"))
    path.write_bytes(buffer.getvalue())
    print(f"{path.relative_to(REPO)}: {path.stat().st_size / 1024:.0f} KiB")


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def task_number(task_id: str) -> int:
    return int(task_id.rsplit("/", 1)[-1].rsplit("_", 1)[-1])


def humaneval_candidates(shared: Path, samples: int) -> list[dict]:
    rows = read_gz_json(shared / "humaneval_codegen16b" / "labels_recomputed.jsonl.gz")
    keep = [
        {k: r[k] for k in ("task_id", "sample_idx", "completion", "passed")} for r in rows if r["sample_idx"] < samples
    ]
    keep.sort(key=lambda r: (task_number(r["task_id"]), r["sample_idx"]))
    tasks = {r["task_id"] for r in keep}
    assert len(tasks) == 164 and len(keep) == 164 * samples, (len(tasks), len(keep))
    return keep


def classeval_tasks(shared: Path) -> list[dict]:
    tasks = read_gz_json(shared / "classeval" / "ClassEval_data.json.gz")
    out = []
    for task in tasks:
        row = {k: task[k] for k in CLASSEVAL_FIELDS}
        row["methods_info"] = [
            {"method_name": m["method_name"], "test_class": m["test_class"]} for m in task["methods_info"]
        ]
        out.append(row)
    out.sort(key=lambda r: task_number(r["task_id"]))
    assert len(out) == 100
    return out


def classeval_candidates(shared: Path) -> list[dict]:
    rows = []
    for path in sorted((shared / "classeval" / "model_output").glob("*_100_c_5.json.gz")):
        model = path.name.split("_100_c_5")[0]
        for task in read_gz_json(path):
            for i, completion in enumerate(task["predict"]):
                rows.append(
                    {"task_id": task["task_id"], "model": model, "sample_idx": i, "code": extract_code(completion)}
                )
    rows.sort(key=lambda r: (task_number(r["task_id"]), r["model"], r["sample_idx"]))
    assert len(rows) == 100 * 5 * 5, len(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    parser.add_argument("--humaneval-samples", type=int, default=20, help="CodeGen-16B samples kept per problem")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    write_gz(OUT / "humaneval_candidates.jsonl.gz", jsonl(humaneval_candidates(args.shared, args.humaneval_samples)))
    write_gz(OUT / "classeval_tasks.json.gz", json.dumps(classeval_tasks(args.shared), ensure_ascii=False, indent=0))
    write_gz(OUT / "classeval_candidates.jsonl.gz", jsonl(classeval_candidates(args.shared)))


if __name__ == "__main__":
    main()
