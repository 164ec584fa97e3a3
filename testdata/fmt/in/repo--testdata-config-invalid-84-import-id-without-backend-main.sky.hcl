cluster "dev" {}

import {
  to = cluster.dev
  id = "somewhere"
}
