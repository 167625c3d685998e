#!/usr/bin/env python3
"""Hugging Face Hub: export a released tag to a Hub-ready folder, and push it as one commit.

    timm-stim-export cifar_resnet20_stim.stpp_cifar10 out/cifar_resnet20_stim.stpp_cifar10
    timm-stim-push cifar_resnet20_stim.stpp_cifar10 --dry-run
    HF_TOKEN=... timm-stim-push cifar_resnet20_stim.stpp_cifar10 --private

Export writes `model.safetensors` (the released file, byte for byte, so the manifest's sha256 holds for the Hub
copy) and every sidecar of the tag (`depth_stats.safetensors`: per-depth BN statistics), `config.json` through
timm's `save_for_hf` (the tag's `pretrained_cfg`: description, input size, mean / std, label names), a generated
`README.md` card (`timm_stim.cards`, from the manifest entry alone), the per-depth plot and `robustness.json`, plus
the run's `summary.csv` and `args.yaml` when the run directory is at hand; every file mode 0644. It refuses a folder
that already holds files (`--overwrite` replaces them) or that cannot be written. The folder loads with
`timm.create_model('local-dir:OUT')` after `import timm_stim`.

Push: `create_repo` and one `upload_folder` commit (the Hub applies a commit whole, or not at all); token from
`--token`, `HF_TOKEN` or `hf auth login`. On success the Hub commit is pinned in the manifest's `hf_hub_id`
(`org/name@<commit>`), so `pretrained=True` reads exactly the released bytes; on any failure the manifest is
untouched and a repository this push created is deleted again.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .cards import PLOT_NAME, model_card
from .models.weights import (WeightsEntry, entry_cfg, hub_unreachable, read_manifest, resolve_depth_stats,
                             resolve_file, update_manifest, weights_dir)
from .validate import plot_robustness

__all__ = ['export', 'push', 'find_released', 'PushError', 'export_cli', 'push_cli']

_logger = logging.getLogger('hub')
RUN_FILES = ('summary.csv', 'args.yaml')


class PushError(RuntimeError):
    """A push that published nothing."""


def find_released(name: str, directory: Optional[Path] = None) -> WeightsEntry:
    """The manifest entry `<model>.<tag>` (ValueError listing the released tags when absent)."""
    entries = read_manifest(directory)
    for entry in entries:
        if entry.name == name:
            return entry
    raise ValueError(f'{name} is not a released tag (manifest {Path(directory or weights_dir()) / "manifest.json"}: '
                     f'{[e.name for e in entries] or "empty"}); make it with timm-stim-release.')


def _run_dir(entry: WeightsEntry, run_dir: Optional[Path]) -> Optional[Path]:
    if run_dir is not None:
        return Path(run_dir)
    source = entry.source.split(' (')[0]
    return Path(source).parent if source else None


def export(name: str, out_dir: Path, directory: Optional[Path] = None, run_dir: Optional[Path] = None,
           overwrite: bool = False) -> List[Path]:
    """Write the Hub folder of tag `name` into `out_dir`; returns the files written. A folder that is not empty is
    refused (ValueError, nothing written) unless `overwrite`; so is one that cannot be written."""
    import timm
    from timm.models import save_for_hf
    out_dir = Path(out_dir)
    entry = find_released(name, directory)
    _check_out_dir(out_dir, overwrite)
    weights = resolve_file(entry, directory)  # verified (sha256) local file or pinned Hub copy
    depth_stats = resolve_depth_stats(entry, directory)
    overlay = dict(entry_cfg(entry), file=str(weights), tag=entry.tag)  # works whatever this process registered
    model = timm.create_model(entry.model, pretrained=True, num_classes=entry.num_classes,
                              pretrained_cfg_overlay=overlay)
    save_for_hf(model, str(out_dir), model_config=dict(label_names=entry.label_names) if entry.label_names else None,
                safe_serialization=True)
    written = [out_dir / n for n in ('config.json', 'README.md', 'robustness.json')]
    for src, stored in zip([weights, depth_stats], entry.stored()):  # the released bytes, not a re-serialisation
        shutil.copyfile(src, out_dir / stored.hub_filename)
        written.append(out_dir / stored.hub_filename)
    _fix_config(out_dir / 'config.json', entry)
    plot = plot_robustness(entry.depths, str(out_dir / PLOT_NAME), f'{entry.name}: top-1 per depth') \
        if entry.depths else None
    (out_dir / 'README.md').write_text(model_card(entry, PLOT_NAME if plot else None))
    (out_dir / 'robustness.json').write_text(json.dumps(dict(
        model=entry.model, tag=entry.tag, evaluation=entry.evaluation, metrics=entry.metrics,
        results=entry.depths), indent=2) + '\n')
    written += [Path(plot)] if plot else []
    written += _copy_run_files(_run_dir(entry, run_dir), out_dir)
    for path in written:
        os.chmod(path, 0o644)  # readable by all, as the released files (safetensors writes 0600)
    return sorted(p for p in out_dir.iterdir() if p.is_file())


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an export folder with files in it (unless `overwrite`) or one this process cannot write."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f'{out_dir} is a file, not a folder: name a new folder to export into.')
    present = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if present and not overwrite:
        raise ValueError(f'{out_dir} is not empty ({", ".join(present[:4])}{", ..." if len(present) > 4 else ""}): '
                         f'export writes README.md, config.json, model.safetensors and more there; name a new or '
                         f'empty folder, or pass --overwrite to replace those files.')
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise ValueError(f'cannot write into {out_dir} ({e.strerror or e}): name a writable folder.') from None


def _fix_config(path: Path, entry: WeightsEntry) -> None:
    """Keep the tag and description in config.json (timm's export drops the source fields)."""
    cfg = json.loads(path.read_text())
    cfg['pretrained_cfg'].update(tag=entry.tag, description=entry.describe())
    if entry.depth_stats:  # what loading checks the folder's depth_stats.safetensors against (depth_stats.load_beside)
        cfg['depth_stats'] = {k: entry.depth_stats[k] for k in ('hf_hub_filename', 'sha256', 'size')
                              if k in entry.depth_stats}
    path.write_text(json.dumps(cfg, indent=2) + '\n')


def _copy_run_files(run_dir: Optional[Path], out_dir: Path) -> List[Path]:
    copied = []
    for name in RUN_FILES:
        src = run_dir / name if run_dir is not None else None
        if src is not None and src.is_file():
            copied.append(Path(shutil.copyfile(src, out_dir / name)))
        else:
            _logger.warning(f'{name} not attached: no run directory with it ({run_dir}); pass --run-dir.')
    return copied


# ------------------------------------------------------------------------------------------------- push
def _token(token: Optional[str]) -> str:
    token = token or os.environ.get('HF_TOKEN')
    if not token:
        from huggingface_hub import get_token
        token = get_token()
    if not token:
        raise PushError('no Hugging Face token: set HF_TOKEN, pass --token, or run `hf auth login`.')
    return token


def push(
        name: str,
        repo_id: Optional[str] = None,
        private: bool = False,
        revision: Optional[str] = None,
        commit_message: Optional[str] = None,
        dry_run: bool = False,
        token: Optional[str] = None,
        directory: Optional[Path] = None,
        run_dir: Optional[Path] = None,
        api: Any = None,
) -> Dict[str, Any]:
    """Export tag `name` and upload it as one commit; pin the commit in the manifest. Returns what was done."""
    directory = Path(directory or weights_dir())
    entry = find_released(name, directory)
    repo_id = repo_id or entry.hub_repo
    with tempfile.TemporaryDirectory(prefix='timm_stim_push_') as tmp:
        files = export(name, Path(tmp) / 'folder', directory, run_dir)
        listing = [dict(path=f.name, size=f.stat().st_size) for f in files]
        if dry_run:
            return dict(repo_id=repo_id, files=listing, dry_run=True)
        commit = _upload(api, _token(token), repo_id, Path(tmp) / 'folder', private, revision,
                         commit_message or f'Release {entry.name} (timm-stim, sha256 {entry.sha256[:12]})')
    pinned = f'{repo_id}@{commit}'
    update_manifest(lambda entries: ([dataclasses.replace(e, hf_hub_id=pinned) if e.name == entry.name else e
                                      for e in entries], {}), directory)
    return dict(repo_id=repo_id, files=listing, commit=commit, hf_hub_id=pinned)


def _upload(api, token: str, repo_id: str, folder: Path, private: bool, revision: Optional[str],
            message: str) -> str:
    """create_repo + one upload_folder commit; deletes a repository it created when the upload fails."""
    if api is None:
        from huggingface_hub import HfApi
        api = HfApi(token=token)
    created = False
    try:
        created = not api.repo_exists(repo_id, token=token)
        api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message,
                                 revision=revision, token=token)
    except Exception as e:
        if created:
            try:
                api.delete_repo(repo_id, token=token)
            except Exception as cleanup:  # report both; the original error matters most
                _logger.warning(f'could not delete the repository {repo_id} created by this push: {cleanup}')
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PushError(f'push of {repo_id} failed, nothing was published ({_why(e)}): {first}') from e
    return info.oid


_NETWORK_ERRORS = ('ConnectError', 'ConnectTimeout', 'ConnectionError', 'NetworkError', 'ProxyError', 'Timeout',
                   'TimeoutException', 'ReadTimeout', 'NameResolutionError', 'MaxRetryError', 'OfflineModeIsEnabled')


def _why(e: BaseException) -> str:
    """The cause of a failed push in a few words: no network (naming DNS or the connection), a rejected token, or a
    rejected upload."""
    chain, link = [], e
    while link is not None and link not in chain:  # the error and what caused it (httpx -> httpcore -> socket)
        chain.append(link)
        link = link.__cause__ or link.__context__
    dns = next((c for c in chain if isinstance(c, socket.gaierror)), None)
    network = dns or next((c for c in chain if isinstance(c, (ConnectionError, TimeoutError, socket.timeout))
                           or type(c).__name__ in _NETWORK_ERRORS), None)
    text = ' '.join(f'{type(c).__name__} {c}' for c in chain).lower()
    if network is None and any(k in text for k in ('failed to resolve', 'name or service not known',
                                                   'connection refused', 'network is unreachable', 'timed out')):
        network = e
    if network is not None:
        probe = hub_unreachable()  # names the host and the failing step, as seen now
        if probe:
            return f'no network: {probe}'
        what = 'DNS lookup failed' if dns is not None else f'{type(network).__name__}'
        return f'no network: {what} ({(str(network).strip().splitlines() or [""])[0]})'
    if any(k in text for k in ('401', '403', 'unauthorized', 'forbidden', 'token')):
        return 'the Hub rejected the token'
    return 'the Hub rejected the upload'


# --------------------------------------------------------------------------------------------- commands
def export_cli(argv: Optional[Sequence[str]] = None) -> None:
    """`timm-stim-export MODEL.TAG OUT_DIR`."""
    p = argparse.ArgumentParser(prog='timm-stim-export', description='Write the Hub folder of a released tag.')
    p.add_argument('name', metavar='MODEL.TAG')
    p.add_argument('out_dir', metavar='OUT_DIR')
    p.add_argument('--run-dir', default=None, help='training run directory (summary.csv, args.yaml)')
    p.add_argument('--weights-dir', default=None)
    p.add_argument('--overwrite', action='store_true', help='export into a folder that already holds files '
                                                            '(replacing those of the same names)')
    args = p.parse_args(argv)
    try:
        files = export(args.name, Path(args.out_dir), args.weights_dir, args.run_dir, args.overwrite)
    except (ValueError, OSError) as e:
        print(f'timm-stim-export: error: {e}', file=sys.stderr)
        raise SystemExit(2)
    print('\n'.join(str(f) for f in files))


def push_cli(argv: Optional[Sequence[str]] = None) -> None:
    """`timm-stim-push MODEL.TAG [--repo-id ORG/NAME] [--private] [--revision R] [--dry-run]`."""
    p = argparse.ArgumentParser(prog='timm-stim-push', description='Push a released tag to the Hugging Face Hub.')
    p.add_argument('name', metavar='MODEL.TAG')
    p.add_argument('--repo-id', default=None, help='default: the manifest\'s hf_hub_id (timm-stim/<model>.<tag>)')
    p.add_argument('--private', action='store_true')
    p.add_argument('--revision', default=None, help='branch to commit to (default main)')
    p.add_argument('--commit-message', default=None)
    p.add_argument('--token', default=None, help='default: $HF_TOKEN or the `hf auth login` token')
    p.add_argument('--dry-run', action='store_true', help='list what would be uploaded; no network')
    p.add_argument('--run-dir', default=None)
    p.add_argument('--weights-dir', default=None)
    args = p.parse_args(argv)
    try:
        res = push(args.name, args.repo_id, args.private, args.revision, args.commit_message, args.dry_run,
                   args.token, args.weights_dir, args.run_dir)
    except (PushError, ValueError, FileNotFoundError) as e:
        print(f'timm-stim-push: error: {e}', file=sys.stderr)
        raise SystemExit(1)
    for f in res['files']:
        print(f'{"would upload" if args.dry_run else "uploaded"} {res["repo_id"]}/{f["path"]} ({f["size"]} bytes)')
    if not args.dry_run:
        print(f'Hub commit {res["commit"]}; manifest pins hf_hub_id={res["hf_hub_id"]}')


if __name__ == '__main__':  # python -m timm_stim.hub export|push ...
    if len(sys.argv) < 2 or sys.argv[1] not in ('export', 'push'):
        print('usage: python -m timm_stim.hub export|push ...', file=sys.stderr)
        raise SystemExit(2)
    (export_cli if sys.argv[1] == 'export' else push_cli)(sys.argv[2:])
