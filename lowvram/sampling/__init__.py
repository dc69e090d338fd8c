"""Running a job: the stages (load, encode, denoise, decode, write), OOM recovery, resume files, fault injection."""
