"""`mlxpin launch` for a distributed model: the plan as text."""

from __future__ import annotations

import json
import shlex

from mlxpin.cli.boot import plan_text
from mlxpin.cli.render import share_text
from mlxpin.serve.distributed import DistributedPlan
from mlxpin.serve.plan import PRIVATE_PORT_SHOWN


def distributed_text(plan: DistributedPlan) -> str:
    mode = "pipeline-parallel" if plan.pipeline else "tensor-parallel"
    lines = [
        plan_text(plan.server),
        f"ranks      {len(plan.ranks)} over {plan.backend}, {mode}; rank 0 serves HTTP here",
        "launcher   " + shlex.join(plan.launch_argv(PRIVATE_PORT_SHOWN)),
        f"hostfile   {plan.hostfile_path}  (written at start)",
    ]
    lines += ["  " + line for line in json.dumps(plan.hostfile(), indent=2).splitlines()]
    for rank in plan.ranks:
        where = "this host" if rank.local else "over ssh"
        lines.append(f"rank {rank.rank:<5} {rank.ssh} ({where}, {', '.join(rank.ips) or 'no ip'})")
        lines.append(f"  snapshot {plan.path_of(rank.rank)}  (verified there)")
        lines.append("  argv     " + shlex.join(plan.rank_argv(rank.rank, PRIVATE_PORT_SHOWN)))
        if plan.rank_files is not None:
            lines.append("  reads    " + ", ".join(plan.rank_files[rank.rank]))
    for check, share in zip(plan.hosts, plan.host_shares(), strict=True):
        if share is not None:
            lines.append(f"host       {check.host} holds {share_text(share)}")
    return "\n".join(lines)
