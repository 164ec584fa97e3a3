# Converted from group.yaml by `skyform convert`.

# SkyPilot job group: its jobs start together, as managed jobs with no order between them (rl).

# primary_tasks (line 4): skyform has no primary tasks in a group: the other jobs are not stopped when these end.
#   primary_tasks: [trainer]

# termination_delay (line 5): skyform has no termination delay for a job group.
#   termination_delay: 30s
managed_job "trainer" {
  resources {
    accelerators = "A100:8"
  }

  run = "python trainer.py"
}

managed_job "rollout" {
  num_nodes = 4
  run       = "python rollout.py"
}
