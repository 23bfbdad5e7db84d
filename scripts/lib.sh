# Shared by the scripts: installs the named Debian packages (as root) when a probe fails.
# Usage: ensure "probe command" package...
ensure() {
  local probe=$1
  shift
  if ! eval "$probe" >/dev/null 2>&1; then
    echo "installing: $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$@" >/dev/null
  fi
}
