-- Slurm: the job array task that last worked a run (`JOB_TASK`, its node is the worker's
-- host), a cancel asked for from elsewhere (the workbench) that the run's worker carries out,
-- and a sweep's sbatch script with the job id it was submitted as.
ALTER TABLE runs ADD COLUMN slurm_job TEXT;
ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sweeps ADD COLUMN sbatch TEXT;
ALTER TABLE sweeps ADD COLUMN slurm_job TEXT;
