"""More than one process: diffusers' context parallelism, one process per GPU (planner.plan: `Plan.parallel`).

`lowvram generate` plans; when the plan is context parallel it hands the job to `launch` (torch.distributed.run,
one process per GPU, each running `lowvram worker`); `group` is what a process of that group needs (its rank,
agreeing on a cancel, diffusers' ContextParallelConfig); `run_dir` is the folder the launcher and the processes
share (the jobs, the plan, each process's outcome).
"""
