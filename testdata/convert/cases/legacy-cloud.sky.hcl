# The infra the SkyPilot files name. Add `infra "local" {}` to keep this machine as an option.
infra "gcp" {}

# Converted from legacy-cloud.yaml by `skyform convert`.
cluster "legacy-cloud" {
  resources {
    infra           = "gcp/us-central1"
    accelerators    = ["V100:1", "T4", "A10G:0.5"]
    max_hourly_cost = 12
  }

  autostop {
    idle_minutes = 120
  }

  num_nodes = 3
}

job "legacy-cloud" {
  cluster   = cluster.legacy-cloud
  num_nodes = 3
  run       = "python serve.py"
}
