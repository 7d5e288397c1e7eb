"""`mlxpin launch` for a distributed model: the plan as text/JSON, and running it."""

from __future__ import annotations

import json
import shlex
from typing import Any

from mlxpin.cli.boot import plan_text
from mlxpin.serve.distributed import DistributedPlan

PORT = "<private port>"


def distributed_json(plan: DistributedPlan) -> dict[str, Any]:
    data = plan.server.to_json()
    data["argv"] = plan.launch_argv(PORT)
    data["distributed"] = {
        "backend": plan.backend,
        "pipeline": plan.pipeline,
        "starting_port": plan.starting_port,
        "hostfile_path": str(plan.hostfile_path),
        "hostfile": plan.hostfile(),
        "ranks": [
            {
                "rank": r.rank,
                "host": r.ssh,
                "local": r.local,
                "ips": list(r.ips),
                "snapshot": plan.path_of(r.rank),
                "argv": plan.rank_argv(r.rank, PORT),
                "files": list(plan.rank_files[r.rank]) if plan.rank_files else None,
            }
            for r in plan.ranks
        ],
        "hosts": [h.to_json() for h in plan.hosts],
    }
    return data


def distributed_text(plan: DistributedPlan) -> str:
    mode = "pipeline-parallel" if plan.pipeline else "tensor-parallel"
    lines = [
        plan_text(plan.server),
        f"ranks      {len(plan.ranks)} over {plan.backend}, {mode}; rank 0 serves HTTP here",
        "launcher   " + shlex.join(plan.launch_argv(PORT)),
        f"hostfile   {plan.hostfile_path}  (written at start)",
    ]
    lines += ["  " + line for line in json.dumps(plan.hostfile(), indent=2).splitlines()]
    for rank in plan.ranks:
        where = "this host" if rank.local else "over ssh"
        lines.append(f"rank {rank.rank:<5} {rank.ssh} ({where}, {', '.join(rank.ips) or 'no ip'})")
        lines.append(f"  snapshot {plan.path_of(rank.rank)}  (verified there)")
        lines.append("  argv     " + shlex.join(plan.rank_argv(rank.rank, PORT)))
        if plan.rank_files is not None:
            lines.append("  reads    " + ", ".join(plan.rank_files[rank.rank]))
    return "\n".join(lines)
