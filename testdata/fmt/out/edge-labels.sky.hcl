variable "x" {
  type = set(any)
}
variable "y" { type = map(string) }
resource "a" "b" {
  n = 1
}
block "with \"esc\"" {}
