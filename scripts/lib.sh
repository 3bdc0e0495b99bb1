# shellcheck shell=bash
# Shared by scripts/test and scripts/demo (sourced, not run): installing what the tests and the
# demo need, only when it is missing.

SFTPMOUNT_APT_UPDATED=${SFTPMOUNT_APT_UPDATED:-}

# Prints one phase line.
phase() {
    printf '==> %s\n' "$*"
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root for: $*"
    fi
}

# ensure_tools TOOL:PACKAGE...
# TOOL is a command name (looked up on PATH) or an absolute path; PACKAGE is the Debian package
# that provides it. Installs (after one apt-get update) the packages of the missing tools only.
ensure_tools() {
    local spec tool pkg missing=()
    for spec in "$@"; do
        tool=${spec%%:*}
        pkg=${spec#*:}
        if [[ $tool == /* ]]; then
            [[ -x $tool ]] && continue
        else
            command -v "$tool" >/dev/null && continue
        fi
        [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        echo "    all present"
        return
    fi
    echo "    installing: ${missing[*]}"
    if [[ -z $SFTPMOUNT_APT_UPDATED ]]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        SFTPMOUNT_APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Makes sure /dev/fuse exists: loads the module, or makes the device node if the kernel has FUSE.
ensure_fuse() {
    [[ -c /dev/fuse ]] && return
    if command -v modprobe >/dev/null; then
        as_root modprobe fuse || true
    fi
    if [[ ! -c /dev/fuse ]] && grep -qw fuse /proc/filesystems 2>/dev/null; then
        as_root mknod -m 0666 /dev/fuse c 10 229 || true
    fi
    [[ -c /dev/fuse ]] ||
        die "/dev/fuse is missing and could not be created (modprobe fuse failed): this machine cannot run FUSE mounts"
}

# sshd's privilege separation directory.
ensure_sshd_dir() {
    [[ -d /run/sshd ]] || as_root install -d -m 0755 /run/sshd
}

# cargo from rustup may not be on PATH in a non-login shell.
ensure_cargo_on_path() {
    if ! command -v cargo >/dev/null && [[ -x $HOME/.cargo/bin/cargo ]]; then
        PATH=$HOME/.cargo/bin:$PATH
    fi
    command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"
}

# Whether PATH is a mount point, from /proc/self/mountinfo (never stats PATH, which may hang on
# a dead FUSE mount).
is_mounted() {
    awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# start_throwaway_sshd DIR: makes host and user keys, authorized_keys, known_hosts and an
# sshd_config in DIR, and starts OpenSSH's sshd on a free port of 127.0.0.1 (root login with the
# key only). Sets SSHD_PID and SSHD_PORT. The caller stops it with `kill "$SSHD_PID"`.
start_throwaway_sshd() {
    local dir=$1 port pid
    ssh-keygen -q -t ed25519 -N '' -C sftpmount-throwaway-host -f "$dir/host_ed25519"
    ssh-keygen -q -t ed25519 -N '' -C sftpmount-throwaway-user -f "$dir/id_ed25519"
    cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
    chmod 600 "$dir/authorized_keys"
    SSHD_PID=
    for _ in $(seq 20); do
        port=$((20000 + RANDOM % 40000))
        port_open "$port" && continue
        cat >"$dir/sshd_config" <<CONFIG
# Throwaway sshd of sftpmount's scripts
ListenAddress 127.0.0.1
Port $port
HostKey $dir/host_ed25519
AuthorizedKeysFile $dir/authorized_keys
PidFile none
UsePAM no
StrictModes no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PrintMotd no
MaxSessions 64
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel ERROR
CONFIG
        nohup /usr/sbin/sshd -D -e -f "$dir/sshd_config" </dev/null >>"$dir/sshd.log" 2>&1 &
        pid=$!
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            if port_open "$port"; then
                SSHD_PID=$pid
                break
            fi
            sleep 0.1
        done
        [[ -n $SSHD_PID ]] && break
        # It died (port taken?) or never listened: stop it if it lives, try another port.
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    [[ -n $SSHD_PID ]] || die "sshd did not start; its log: $(cat "$dir/sshd.log")"
    SSHD_PORT=$port
    echo "[127.0.0.1]:$port $(cat "$dir/host_ed25519.pub")" >"$dir/known_hosts"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
