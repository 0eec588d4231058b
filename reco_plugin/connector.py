"""Spark's Kafka connector for the streaming job, and installing it on a server
that cannot reach Maven Central.

The job needs ``spark-sql-kafka-0-10`` (at the installed PySpark's version) and
the few jars it adds to PySpark's own: ``spark-token-provider-kafka-0-10``,
``kafka-clients`` and ``commons-pool2``. By default Spark fetches them from
Maven Central on the job's first start (``--packages``). Offline:

1. where Maven Central (or the shop's own Maven mirror) is reachable, with the
   same PySpark installed: ``manage.py reco_stream --fetch-connector DIR``
   resolves them with the Ivy resolver PySpark ships (the one ``--packages``
   uses) and copies into ``DIR`` the jars PySpark does not already have;
2. copy ``DIR`` to the server and set ``RECO_PLUGIN["SPARK"]["KAFKA_CONNECTOR"]
   = DIR``: the job puts those jars on its classpath (``--jars``) and fetches
   nothing.

No Django import: :func:`fetch` takes everything it uses as arguments.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import quoteattr

MAVEN_CENTRAL = "https://repo1.maven.org/maven2/"
# the connector's own jar: spark-sql-kafka-0-10_<scala>-<spark version>.jar
CONNECTOR_ARTIFACT = "spark-sql-kafka-0-10_"


class ConnectorError(RuntimeError):
    """The connector could not be fetched; the message says why."""


def split_jar_name(jar_name: str) -> tuple[str, str] | None:
    """(artifact, version) of a Maven jar's file name: ``kafka-clients-3.9.2.jar``,
    ``spark-sql-kafka-0-10_2.13-4.2.0.jar``, ``zstd-jni-1.5.7-7.jar``; None for
    a name without a version."""
    if not jar_name.endswith(".jar"):
        return None
    stem = jar_name[: -len(".jar")]
    starts = [m.end() for m in re.finditer(r"-(?=\d)", stem)]
    # the version's first part is dotted and has no Scala suffix ("0-10_2.13" is a name)
    dotted = [i for i in starts if "." in (part := stem[i:].split("-")[0]) and "_" not in part]
    if not (dotted or starts):
        return None
    at = (dotted or starts)[-1]
    return stem[: at - 1], stem[at:]


def artifact_of(jar_name: str) -> str | None:
    """``kafka-clients`` of ``kafka-clients-3.9.2.jar``; None for a name without a version."""
    split = split_jar_name(jar_name)
    return split[0] if split else None


def names_path(setting: object) -> bool:
    """Whether ``KAFKA_CONNECTOR`` names a directory (a path) rather than Maven
    coordinates (``group:artifact:version``)."""
    return bool(setting) and os.sep in str(setting)


def connector_jar(directory: str | os.PathLike[str]) -> Path | None:
    """The ``spark-sql-kafka-0-10_*.jar`` in ``directory``, if any."""
    jars = sorted(Path(directory).glob(f"{CONNECTOR_ARTIFACT}*.jar"))
    return jars[-1] if jars else None


def installed_pyspark_version() -> str | None:
    try:
        return importlib.metadata.version("pyspark")
    except importlib.metadata.PackageNotFoundError:
        return None


def directory_problem(directory: str | os.PathLike[str]) -> str | None:
    """What makes ``directory`` unusable as ``KAFKA_CONNECTOR``, or None: no
    connector jar in it, or one for another Spark than the installed PySpark
    (checked only where PySpark is installed)."""
    jar = connector_jar(directory)
    if jar is None:
        return f"{directory} holds no {CONNECTOR_ARTIFACT}*.jar (Spark's Kafka connector)"
    version = installed_pyspark_version()
    found = split_jar_name(jar.name)
    if version and found and found[1] != version:
        return (
            f"{jar.name} in {directory} is for Spark {found[1]}, the installed PySpark is {version}"
        )
    return None


def local_maven_repository() -> Path:
    """Maven's local repository (``~/.m2/repository``), searched before any other."""
    return Path.home() / ".m2" / "repository"


def pyspark_jars() -> Path:
    """PySpark's own jars directory (Spark and what it depends on, Ivy included)."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise ConnectorError(
            "PySpark is not installed: pip install 'django-reco-plugin[spark]' (the connector "
            "fetched must match its version)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "jars"


def default_coordinates() -> str:
    """Maven coordinates of the connector matching the installed PySpark."""
    from spark_jobs.session import connector_coordinates

    return connector_coordinates()


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise ConnectorError(
            "fetching the connector needs Java: no `java` on PATH and no JAVA_HOME"
        )
    return java


def _ivy_settings(repositories: list[str]) -> str:
    resolvers = "\n".join(
        f'      <ibiblio name="repo{n}" m2compatible="true" root={quoteattr(url)}/>'
        for n, url in enumerate(repositories)
    )
    return (
        "<ivysettings>\n"
        '  <settings defaultResolver="chain"/>\n'
        "  <resolvers>\n"
        '    <chain name="chain" returnFirst="true">\n'
        f"{resolvers}\n"
        "    </chain>\n"
        "  </resolvers>\n"
        "</ivysettings>\n"
    )


def _ivy_module(coordinates: str, shipped: Iterable[str]) -> str:
    group, artifact, version = coordinates.split(":")
    # what PySpark ships is on the job's classpath already: not fetched twice
    excludes = "\n".join(f"      <exclude module={quoteattr(m)}/>" for m in sorted(shipped))
    return (
        '<ivy-module version="2.0">\n'
        '  <info organisation="reco-plugin" module="kafka-connector"/>\n'
        "  <dependencies>\n"
        f"    <dependency org={quoteattr(group)} name={quoteattr(artifact)} "
        f'rev={quoteattr(version)} conf="default->default">\n'
        f"{excludes}\n"
        "    </dependency>\n"
        "  </dependencies>\n"
        "</ivy-module>\n"
    )


def repositories_for(given: Iterable[str] | None = None) -> list[str]:
    """Where :func:`fetch` looks, in order: Maven's local repository (when there
    is one), then ``given`` (default: Maven Central)."""
    found: list[str] = []
    local = local_maven_repository()
    if local.is_dir():
        found.append(local.as_uri() + "/")
    for url in [MAVEN_CENTRAL] if given is None else given:
        url = url if url.endswith("/") else url + "/"
        if url not in found:
            found.append(url)
    return found


def fetch(
    directory: str | os.PathLike[str],
    *,
    coordinates: str | None = None,
    repositories: Iterable[str] | None = None,
    timeout: float = 900,
) -> list[Path]:
    """Resolve the connector (``coordinates``, default: the one matching the
    installed PySpark) and its dependencies from ``repositories`` (see
    :func:`repositories_for`), and copy into ``directory`` the jars PySpark does
    not ship. Older versions of the same jars in ``directory`` are removed.
    Returns the jars now in ``directory`` for the connector."""
    coordinates = coordinates or default_coordinates()
    if coordinates.count(":") != 2:
        raise ConnectorError(f"{coordinates!r} are not Maven coordinates (group:artifact:version)")
    jars = pyspark_jars()
    ivy = sorted(jars.glob("ivy-*.jar"))
    if not ivy:
        raise ConnectorError(f"no Ivy jar in {jars}: is PySpark's installation complete?")
    shipped = {a for a in (artifact_of(p.name) for p in jars.glob("*.jar")) if a}
    urls = repositories_for(repositories)
    destination = Path(directory)
    with tempfile.TemporaryDirectory(prefix="reco-connector-") as work_dir:
        work = Path(work_dir)
        (work / "ivysettings.xml").write_text(_ivy_settings(urls))
        (work / "ivy.xml").write_text(_ivy_module(coordinates, shipped))
        retrieved = work / "jars"
        argv = [
            _java(),
            "-cp",
            str(ivy[-1]),
            "org.apache.ivy.Main",
            "-settings",
            str(work / "ivysettings.xml"),
            "-ivy",
            str(work / "ivy.xml"),
            "-cache",
            str(work / "cache"),
            "-confs",
            "default",
            "-retrieve",
            str(retrieved / "[artifact]-[revision](-[classifier]).[ext]"),
        ]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ConnectorError(f"resolving {coordinates} took over {timeout:.0f} s") from None
        fetched = sorted(retrieved.glob("*.jar")) if retrieved.is_dir() else []
        if done.returncode or not any(p.name.startswith(CONNECTOR_ARTIFACT) for p in fetched):
            words = ("not found", "NOT FOUND", "UNRESOLVED", "FAILED", "nknown", "rror")
            problems = list(
                dict.fromkeys(
                    line.strip(" \t:")
                    for line in (done.stdout + done.stderr).splitlines()
                    if any(w in line for w in words)
                )
            )
            raise ConnectorError(
                f"could not resolve {coordinates} from {', '.join(urls)}"
                + (":\n  " + "\n  ".join(problems[:15]) if problems else "")
            )
        destination.mkdir(parents=True, exist_ok=True)
        artifacts = {artifact_of(p.name) for p in fetched}
        for old in destination.glob("*.jar"):
            if artifact_of(old.name) in artifacts and old.name not in {p.name for p in fetched}:
                old.unlink()
        for jar in fetched:
            shutil.copyfile(jar, destination / jar.name)
    return [destination / jar.name for jar in fetched]
