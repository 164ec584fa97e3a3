# Converted from pipeline.yaml by `skyform convert`.

# SkyPilot pipeline: each task is a managed job that starts after the one before has succeeded (etl).
managed_job "extract" {
  resources {
    cpus = "2+"
  }

  run = "python extract.py"
}

managed_job "etl-2" {
  depends_on = [managed_job.extract]
  run        = "python transform.py"
}

managed_job "load" {
  depends_on = [managed_job.etl-2]
  run        = "python load.py"
}
