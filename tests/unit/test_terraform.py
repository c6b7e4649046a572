"""infra/terraform/aws, checked without AWS: parsed with python-hcl2, then its structure.

Nothing here plans or applies (that needs AWS credentials and the provider). The module is
parsed as HCL and held to what its README promises: every variable declared and used, the
bucket versioned, encrypted, private and with lifecycle rules, only MQTT over TLS open to the
devices, Kafka chosen by `kafka_mode`, IAM without wildcard actions, the outputs the configs
need. The formatting check reproduces `terraform fmt`'s rules (indentation, `=` alignment,
spacing) and is shown to fail on a badly formatted snippet.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hcl2.utils import SerializationOptions

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "infra" / "terraform" / "aws"
OPTIONS = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)

Body = dict[str, Any]

# Actions that AWS authorizes on no resource narrower than "*" (service authorization
# reference: the ssmmessages actions have no resource types). Only these may take "*".
WILDCARD_RESOURCE_ACTIONS = {
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
}
MQTT_TLS_PORTS = {8883, 8884}
REQUIRED_OUTPUTS = {
    "bucket_name",
    "store_url",
    "kafka_url",
    "broker_mqtt_url",
    "broker_private_mqtt_url",
    "trainer_instance_ids",
    "bridge_instance_ids",
}


# -- the parsed module ------------------------------------------------------------------------


@cache
def documents() -> dict[str, Body]:
    """Every .tf file of the module, parsed: file name -> document."""
    paths = sorted(MODULE.glob("*.tf"))
    assert paths, f"no .tf files under {MODULE}"
    return {
        path.name: hcl2.loads(path.read_text(), serialization_options=OPTIONS) for path in paths
    }


def labelled(kind: str, depth: int) -> dict[tuple[str, ...], Body]:
    """Blocks of one kind by their labels: resource/data have two, variable/output one."""
    found: dict[tuple[str, ...], Body] = {}

    def walk(node: Body, labels: tuple[str, ...], file: str) -> None:
        if len(labels) == depth:
            assert labels not in found, f"{kind} {'.'.join(labels)} declared twice ({file})"
            found[labels] = node
            return
        for label, inner in node.items():
            walk(inner, (*labels, label), file)

    for file, document in documents().items():
        for entry in document.get(kind, []):
            walk(entry, (), file)
    return found


def resources(kind: str) -> dict[str, Body]:
    return {name: body for (rtype, name), body in labelled("resource", 2).items() if rtype == kind}


def resource(kind: str, name: str) -> Body:
    found = resources(kind)
    assert name in found, f"resource {kind}.{name} missing"
    return found[name]


def data_sources(kind: str) -> dict[str, Body]:
    return {name: body for (dtype, name), body in labelled("data", 2).items() if dtype == kind}


def variables() -> dict[str, Body]:
    return {name: body for (name,), body in labelled("variable", 1).items()}


def outputs() -> dict[str, Body]:
    return {name: body for (name,), body in labelled("output", 1).items()}


def module_locals() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for document in documents().values():
        for entry in document.get("locals", []):
            for name, value in entry.items():
                assert name not in merged, f"local.{name} declared twice"
                merged[name] = value
    return merged


def one_block(body: Body, name: str) -> Body:
    blocks = body.get(name)
    assert isinstance(blocks, list), f"no {name} block"
    assert len(blocks) == 1, f"expected one {name} block, found {len(blocks)}"
    block: Body = blocks[0]
    return block


def strings(node: Any) -> Iterator[str]:
    """Every string value (expressions included) under `node`."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def unwrap(expression: Any) -> str:
    """`${expr}` -> `expr`: python-hcl2 wraps every non-literal expression that way."""
    text = str(expression)
    return text[2:-1] if text.startswith("${") and text.endswith("}") else text


def local_value(name: str) -> str:
    value = module_locals().get(name)
    assert isinstance(value, str), f"local.{name} missing or not a single expression"
    return value


VAR_REFERENCE = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)")


# -- variables ----------------------------------------------------------------------------------


def test_every_referenced_variable_is_declared_and_every_declared_one_used() -> None:
    declared = variables()
    referenced: set[str] = set()
    for document in documents().values():
        for kind, entries in document.items():
            if kind == "variable":
                continue  # a validation naming its own variable is not a use
            for text in strings(entries):
                referenced.update(VAR_REFERENCE.findall(text))
    assert referenced - declared.keys() == set(), "referenced but not declared"
    assert declared.keys() - referenced == set(), "declared but never used"


def test_variables_are_typed_described_and_validate_only_themselves() -> None:
    for name, body in variables().items():
        assert "type" in body, f"variable {name} has no type"
        assert str(body.get("description", "")).strip(), f"variable {name} has no description"
        for validation in body.get("validation", []):
            # Terraform before 1.9 lets a validation name only its own variable.
            assert set(VAR_REFERENCE.findall(str(validation["condition"]))) == {name}, name
            assert str(validation["error_message"]).strip(), name


def test_key_variables_are_validated() -> None:
    declared = variables()
    kafka_mode = str(one_block(declared["kafka_mode"], "validation")["condition"])
    assert re.search(r'contains\(\["msk", "self_managed"\], var\.kafka_mode\)', kafka_mode)
    assert "var.trainer_count >= 0" in str(one_block(declared["trainer_count"], "validation"))
    assert unwrap(declared["trainer_count"]["type"]) == "number"
    assert unwrap(declared["trainer_instance_type"]["type"]) == "string"
    assert unwrap(declared["device_cidrs"]["type"]) == "list(string)"
    # No default: opening the broker is always a decision of whoever deploys.
    assert "default" not in declared["device_cidrs"]
    assert "cidrhost(cidr, 0)" in str(one_block(declared["device_cidrs"], "validation"))


def test_versions_pin_terraform_and_the_aws_provider() -> None:
    terraform = one_block(documents()["versions.tf"], "terraform")
    assert re.fullmatch(r">= ?1\.([5-9]|\d\d)(\.\d+)?", terraform["required_version"])
    aws = one_block(terraform, "required_providers")["aws"]
    assert aws["source"] == "hashicorp/aws"
    assert re.fullmatch(r"~> ?5\.\d+", aws["version"])


# -- object store -------------------------------------------------------------------------------


def test_bucket_is_versioned_encrypted_and_private() -> None:
    bucket_ref = "${aws_s3_bucket.store.id}"
    versioning = resource("aws_s3_bucket_versioning", "store")
    assert versioning["bucket"] == bucket_ref
    assert one_block(versioning, "versioning_configuration")["status"] == "Enabled"

    encryption = resource("aws_s3_bucket_server_side_encryption_configuration", "store")
    assert encryption["bucket"] == bucket_ref
    default = one_block(one_block(encryption, "rule"), "apply_server_side_encryption_by_default")
    assert default["sse_algorithm"] in {"aws:kms", "AES256"}
    if default["sse_algorithm"] == "aws:kms":
        assert default["kms_master_key_id"] == "${aws_kms_key.store.arn}"
        assert resource("aws_kms_key", "store")["enable_key_rotation"] is True

    block = resource("aws_s3_bucket_public_access_block", "store")
    assert block["bucket"] == bucket_ref
    for setting in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert block[setting] is True, setting


def test_bucket_policy_refuses_requests_without_tls() -> None:
    policy = resource("aws_s3_bucket_policy", "store")
    assert policy["policy"] == "${data.aws_iam_policy_document.store_bucket.json}"
    statements = data_sources("aws_iam_policy_document")["store_bucket"]["statement"]
    insecure = [
        s
        for s in statements
        if s.get("effect") == "Deny"
        and any(
            c["variable"] == "aws:SecureTransport" and c["values"] == ["false"]
            for c in s.get("condition", [])
        )
    ]
    assert len(insecure) == 1
    assert insecure[0]["resources"] == [
        "${aws_s3_bucket.store.arn}",
        "${aws_s3_bucket.store.arn}/*",
    ]


def test_lifecycle_expires_old_checkpoints_and_abandoned_uploads() -> None:
    lifecycle = resource("aws_s3_bucket_lifecycle_configuration", "store")
    rules = {rule["id"]: rule for rule in lifecycle["rule"]}
    assert all(rule["status"] == "Enabled" for rule in rules.values())

    def prefix(rule: Body) -> str | None:
        value = one_block(rule, "filter").get("prefix")
        return None if value is None else str(value)

    checkpoints = [r for r in rules.values() if prefix(r) == "${var.store_prefix}/checkpoints/"]
    assert len(checkpoints) == 1, "no lifecycle rule for the checkpoints prefix"
    noncurrent = one_block(checkpoints[0], "noncurrent_version_expiration")
    assert noncurrent["noncurrent_days"] == "${var.checkpoint_noncurrent_days}"
    transition = one_block(checkpoints[0], "transition")
    assert transition["days"] == "${var.checkpoint_transition_days}"

    claims = [r for r in rules.values() if prefix(r) == "${var.store_prefix}/claims/"]
    assert len(claims) == 1
    assert one_block(claims[0], "expiration")["days"] == "${var.claim_expiration_days}"

    everything = [r for r in rules.values() if prefix(r) is None]
    assert len(everything) == 1, "one rule must cover the whole bucket"
    abort = one_block(everything[0], "abort_incomplete_multipart_upload")
    assert abort["days_after_initiation"] == "${var.abort_incomplete_multipart_days}"


# -- network ------------------------------------------------------------------------------------


def test_only_mqtt_over_tls_is_open_beyond_the_vpc_and_only_on_the_broker() -> None:
    assert resources("aws_security_group_rule") == {}, "use aws_vpc_security_group_*_rule"
    for name, group in resources("aws_security_group").items():
        assert "ingress" not in group, f"inline ingress rules in {name}"
        assert "egress" not in group, f"inline egress rules in {name}"

    from_addresses = []
    for name, rule in resources("aws_vpc_security_group_ingress_rule").items():
        by_address = {"cidr_ipv4", "cidr_ipv6", "prefix_list_id"} & rule.keys()
        if not by_address:
            assert "referenced_security_group_id" in rule, name
            continue
        from_addresses.append(rule)
        assert rule["security_group_id"] == "${aws_security_group.broker.id}", name
        assert rule["ip_protocol"] == "tcp", name
        assert rule["from_port"] == rule["to_port"], name
        assert rule["from_port"] in MQTT_TLS_PORTS, f"{name} opens port {rule['from_port']}"
        assert rule["cidr_ipv4"] == "${each.value}", name
        assert "var.device_cidrs" in str(rule["for_each"]), name
    assert {rule["from_port"] for rule in from_addresses} == MQTT_TLS_PORTS


def test_kafka_admits_the_bridges_and_trainers_only() -> None:
    rules = resources("aws_vpc_security_group_ingress_rule").values()

    def sources(group: str) -> set[str]:
        return {
            str(rule.get("referenced_security_group_id"))
            for rule in rules
            if rule["security_group_id"] == f"${{aws_security_group.{group}.id}}"
        }

    kafka_rules = [r for r in rules if r["security_group_id"] == "${aws_security_group.kafka.id}"]
    assert sources("kafka") == {
        "${aws_security_group.bridge.id}",
        "${aws_security_group.trainers.id}",
    }
    assert all(r["from_port"] == r["to_port"] == "${local.kafka_port}" for r in kafka_rules)
    assert sources("bridge") == set(), "nothing connects to a bridge"
    assert sources("trainers") == {"${aws_security_group.trainers.id}"}, "DDP peers only"


def test_instances_require_imdsv2_encrypt_disks_and_take_no_ssh_key() -> None:
    instances = resources("aws_instance")
    assert set(instances) == {"broker", "bridge", "trainer", "kafka"}
    for name, instance in instances.items():
        assert "key_name" not in instance, f"{name}: SSH key (use Session Manager)"
        assert one_block(instance, "metadata_options")["http_tokens"] == "required", name
        assert one_block(instance, "root_block_device")["encrypted"] is True, name
        tier = "public" if name == "broker" else "private"
        assert f"aws_subnet.{tier}[" in str(instance["subnet_id"]), name
        assert "associate_public_ip_address" not in instance, name


# -- kafka --------------------------------------------------------------------------------------

TERNARY = re.compile(r"^(?P<condition>.+?) \? (?P<yes>\d+) : (?P<no>\d+)$")
MODE_TEST = re.compile(r'^var\.kafka_mode (?P<op>==|!=) "(?P<mode>[a-z_]+)"$')


def condition_holds(text: str, kafka_mode: str) -> bool:
    """Evaluate a count condition that must depend on var.kafka_mode and nothing else."""
    text = text.strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    if text.startswith("!"):
        return not condition_holds(text[1:], kafka_mode)
    if text.startswith("local."):
        return condition_holds(unwrap(local_value(text.removeprefix("local."))), kafka_mode)
    match = MODE_TEST.match(text)
    assert match, f"count condition {text!r} is not driven by var.kafka_mode"
    return (kafka_mode == match["mode"]) == (match["op"] == "==")


def count_in_mode(body: Body, kafka_mode: str) -> int:
    match = TERNARY.match(unwrap(body["count"]))
    assert match, f"count {body['count']!r} is not `condition ? n : m`"
    return int(match["yes"] if condition_holds(match["condition"], kafka_mode) else match["no"])


@pytest.mark.parametrize(
    ("kafka_mode", "msk_count", "instance_count"), [("msk", 1, 0), ("self_managed", 0, 1)]
)
def test_kafka_mode_picks_msk_or_the_self_managed_node(
    kafka_mode: str, msk_count: int, instance_count: int
) -> None:
    assert count_in_mode(resource("aws_msk_cluster", "this"), kafka_mode) == msk_count
    assert count_in_mode(resource("aws_msk_configuration", "this"), kafka_mode) == msk_count
    assert count_in_mode(resource("aws_cloudwatch_log_group", "msk"), kafka_mode) == msk_count
    assert count_in_mode(resource("aws_instance", "kafka"), kafka_mode) == instance_count


def test_msk_authenticates_with_iam_over_tls_only() -> None:
    cluster = resource("aws_msk_cluster", "this")
    authentication = one_block(cluster, "client_authentication")
    assert authentication["unauthenticated"] is False
    assert one_block(authentication, "sasl") == {"iam": True}
    transit = one_block(one_block(cluster, "encryption_info"), "encryption_in_transit")
    assert transit == {"client_broker": "TLS", "in_cluster": True}
    assert "bootstrap_brokers_sasl_iam" in local_value("kafka_bootstrap")
    assert "sasl_ssl" in local_value("kafka_url")


KAFKA_URLS = re.compile(r'\$\{\(local\.msk \? "(?P<msk>[^"]+)" : "(?P<self_managed>[^"]+)"\)\}')


def test_kafka_url_is_one_the_client_accepts_with_iam_on_msk_and_broker_default_replicas() -> None:
    """kafka_url, rendered, parses into the client's options: IAM signed for the module's
    region on MSK. Neither mode sets replication_factor, so topics take the brokers'
    default.replication.factor: on MSK min(3, brokers), above min.insync.replicas."""
    from bus.config import env_overrides
    from bus.log.kafka_config import KafkaOptions, parse_kafka_url

    urls = KAFKA_URLS.fullmatch(local_value("kafka_url"))
    assert urls, local_value("kafka_url")
    options: dict[str, KafkaOptions] = {}
    for mode, url in urls.groupdict().items():
        rendered = url.replace("${local.kafka_bootstrap}", "b-1.x:9098,b-2.x:9098")
        rendered = rendered.replace("${var.region}", "eu-west-1")
        assert "${" not in rendered, rendered
        # As the instances get it: a line of /etc/fleetlearn/*.env, read as an override.
        from_env = env_overrides("FLEETLEARN_BRIDGE", {"FLEETLEARN_BRIDGE__LOG_URL": rendered})
        assert from_env == {"log_url": rendered}
        _, options[mode] = parse_kafka_url(rendered, {})
        assert options[mode].replication_factor == -1, mode
    msk = options["msk"]
    assert (msk.aws_iam, msk.aws_region, msk.security_protocol) == (True, "eu-west-1", "sasl_ssl")
    assert (msk.sasl_mechanism, msk.sasl_username) == (None, None)
    assert "aws_region=${var.region}" in urls["msk"]
    assert not options["self_managed"].aws_iam
    properties = str(resource("aws_msk_configuration", "this")["server_properties"])
    assert "default.replication.factor=${local.msk_replication_factor}" in properties
    assert "min(3, local.msk_broker_count)" in local_value("msk_replication_factor")
    [precondition] = one_block(resource("aws_msk_cluster", "this"), "lifecycle")["precondition"]
    assert unwrap(precondition["condition"]) == (
        "var.kafka_min_insync_replicas < local.msk_replication_factor"
    )


# -- IAM ----------------------------------------------------------------------------------------


@dataclass
class Statement:
    document: str
    body: Body
    dynamic_over: str | None = None
    actions: list[str] = field(init=False)
    resources: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.actions = [str(a) for a in self.body.get("actions", [])]
        value = self.body.get("resources", [])
        self.resources = [str(r) for r in value] if isinstance(value, list) else [str(value)]

    @property
    def allows(self) -> bool:
        return str(self.body.get("effect", "Allow")) == "Allow"


def statements() -> list[Statement]:
    found: list[Statement] = []
    for name, document in data_sources("aws_iam_policy_document").items():
        found.extend(Statement(name, body) for body in document.get("statement", []))
        for dynamic in document.get("dynamic", []):
            for label, block in dynamic.items():
                assert label == "statement", f"{name}: dynamic {label}"
                found.extend(
                    Statement(name, body, dynamic_over=str(block["for_each"]))
                    for body in block["content"]
                )
    return found


def test_iam_allows_no_wildcard_actions_and_wildcard_resources_only_where_aws_requires() -> None:
    allowing = [s for s in statements() if s.allows and s.actions]
    assert allowing
    for statement in allowing:
        where = f"{statement.document}: {statement.body.get('sid')}"
        for action in statement.actions:
            assert "*" not in action, f"{where}: wildcard action {action}"
        if "*" in statement.resources:
            assert set(statement.actions) <= WILDCARD_RESOURCE_ACTIONS, where
            assert statement.resources == ["*"], where


def test_every_policy_comes_from_a_policy_document_and_no_aws_managed_policy_is_attached() -> None:
    policies = [
        *resources("aws_iam_role_policy").values(),
        *resources("aws_iam_policy").values(),
    ]
    assert policies
    for policy in policies:
        assert re.fullmatch(r"\$\{data\.aws_iam_policy_document\.\w+\.json\}", policy["policy"])
    for role in resources("aws_iam_role").values():
        assert role["assume_role_policy"] == "${data.aws_iam_policy_document.ec2_assume.json}"
    for attachment in resources("aws_iam_role_policy_attachment").values():
        assert re.fullmatch(r"\$\{aws_iam_policy\.\w+\.arn\}", attachment["policy_arn"])


def test_store_access_is_scoped_to_the_bucket_and_the_bridge_to_its_claims() -> None:
    bucket = "${aws_s3_bucket.store.arn}"
    for statement in statements():
        if any(action.startswith("s3:") for action in statement.actions) and statement.allows:
            assert statement.document in {"trainer", "bridge"}
            assert all(r == bucket or r.startswith(f"{bucket}/") for r in statement.resources)
    bridge = [s for s in statements() if s.document == "bridge" and s.actions[0].startswith("s3:")]
    assert [s.resources for s in bridge] == [[f"{bucket}/${{var.store_prefix}}/claims/*"]]
    assert "s3:DeleteObject" not in bridge[0].actions
    trainer = [
        s for s in statements() if s.document == "trainer" and s.actions[0].startswith("s3:")
    ]
    objects = [r for s in trainer for r in s.resources if r != bucket]
    assert objects == [f"{bucket}/${{var.store_prefix}}/*"]


def test_kafka_permissions_exist_only_with_msk_and_name_its_topics_and_groups() -> None:
    kafka = [s for s in statements() if any(a.startswith("kafka-cluster:") for a in s.actions)]
    assert {s.document for s in kafka} == {"trainer", "bridge"}
    for statement in kafka:
        where = f"{statement.document}: {statement.body.get('sid')}"
        assert statement.dynamic_over == "${aws_msk_cluster.this}", where
        for arn in statement.resources:
            assert "statement.value.arn" in arn, where
            if ":topic/" in arn:
                assert "var.kafka_topic_prefix" in arn or "${topic}" in arn, where
            if ":group/" in arn:
                assert "${group}" in arn, where
    writes = {
        s.document: str(s.body["resources"])
        for s in kafka
        if "kafka-cluster:WriteData" in s.actions
    }
    assert "local.topics.updates" in writes["bridge"]
    assert "local.topics.updates" not in writes["trainer"]
    assert "local.topics.releases" in writes["trainer"]
    assert "local.topics.releases" not in writes["bridge"]


# -- trainers, outputs, templates ----------------------------------------------------------------


def test_trainers_are_gpu_instances_sized_by_variables() -> None:
    trainer = resource("aws_instance", "trainer")
    assert trainer["count"] == "${var.trainer_count}"
    assert trainer["instance_type"] == "${var.trainer_instance_type}"
    assert "var.trainer_ami_id" in trainer["ami"]
    assert "data.aws_ami.deep_learning" in trainer["ami"]
    assert trainer["iam_instance_profile"] == "${aws_iam_instance_profile.trainer.name}"
    # Fixed addresses (node 0 is torchrun's rendezvous) from a range AWS never hands out.
    assert trainer["private_ip"] == "${local.trainer_ips[count.index]}"
    assert "${aws_ec2_subnet_cidr_reservation.fixed}" in trainer["depends_on"]
    assert "local.fixed_cidr" in local_value("trainer_ips")
    assert resource("aws_instance", "bridge")["count"] == "${var.bridge_count}"


def test_outputs_give_the_endpoints_the_configs_need() -> None:
    declared = outputs()
    assert declared.keys() >= REQUIRED_OUTPUTS
    for name, body in declared.items():
        assert str(body.get("description", "")).strip(), f"output {name} has no description"
    assert declared["store_url"]["value"] == "${local.store_url}"
    assert re.fullmatch(
        r"s3://\$\{aws_s3_bucket\.store\.bucket\}/\$\{var\.store_prefix\}\?region=\$\{var\.region\}",
        local_value("store_url"),
    )
    assert declared["kafka_url"]["value"] == "${local.kafka_url}"
    assert local_value("kafka_url").count('"kafka://${local.kafka_bootstrap}') == 2
    assert declared["broker_mqtt_url"]["value"] == "mqtts://${local.broker_host}:8883"
    assert declared["broker_private_mqtt_url"]["value"].startswith("mqtts://")
    assert declared["trainer_instance_ids"]["value"] == "${aws_instance.trainer[*].id}"
    assert declared["bridge_instance_ids"]["value"] == "${aws_instance.bridge[*].id}"


TEMPLATE_CALL = re.compile(
    r'templatefile\("\$\{path\.module\}/(?P<path>[^"]+)", \{(?P<args>.*)\}\)'
)
TEMPLATE_NAME = re.compile(r"(?<![$%])\$\{\s*([A-Za-z_]\w*)\s*\}|%\{\s*if\s+([A-Za-z_]\w*)")


def test_templates_exist_and_receive_every_name_they_use() -> None:
    calls = [m for text in strings(documents()) for m in TEMPLATE_CALL.finditer(text)]
    assert len(calls) == 4
    for call in calls:
        template = MODULE / call["path"]
        assert template.is_file(), call["path"]
        given = set(re.findall(r"(\w+) = ", call["args"]))
        used = {a or b for a, b in TEMPLATE_NAME.findall(template.read_text())}
        assert used == given, f"{call['path']}: uses {sorted(used)}, given {sorted(given)}"


# -- formatting: terraform fmt's rules ---------------------------------------------------------

OPENERS, CLOSERS = "{[(", "}])"
HEREDOC = re.compile(r"<<-?([A-Za-z_][\w-]*)$")
LONE_EQUALS = re.compile(r"(?<![=!<>])=(?![=>])")


@dataclass
class Line:
    number: int
    text: str
    code: str = ""
    """The line with string contents masked (same length) and any comment cut off."""
    comment: bool = False
    heredoc_body: bool = False
    opens_heredoc: bool = False


def mask(text: str, number: int, problems: list[str], name: str) -> tuple[str, bool]:
    """Mask quoted strings (nested `${...}` included); return the code and whether a comment
    followed it. A comment after code is reported: comments go on their own line here."""
    out: list[str] = []
    modes: list[str] = []  # "string" or "interp"; interp keeps a brace depth alongside
    depths: list[int] = []
    i = 0
    while i < len(text):
        char = text[i]
        mode = modes[-1] if modes else "code"
        if mode == "string":
            if text.startswith("$${", i) or text.startswith("%%{", i):
                out.append("___")  # escaped: a literal ${ or %{
                i += 3
                continue
            if char == "\\":
                out.append("__")
                i += 2
                continue
            if text.startswith("${", i) or text.startswith("%{", i):
                modes.append("interp")
                depths.append(0)
                out.append("__")
                i += 2
                continue
            if char == '"':
                modes.pop()
                out.append('"')
            else:
                out.append("_")
            i += 1
            continue
        if char == '"':
            modes.append("string")
            out.append('"' if mode == "code" else "_")
            i += 1
            continue
        if mode == "interp":
            if char == "{":
                depths[-1] += 1
            elif char == "}":
                if depths[-1] == 0:
                    modes.pop()
                    depths.pop()
                else:
                    depths[-1] -= 1
            out.append("_")
            i += 1
            continue
        if char == "#" or text.startswith("//", i) or text.startswith("/*", i):
            code = "".join(out)
            if text.startswith("/*", i):
                problems.append(f"{name}:{number}: block comment (use #)")
            if code.strip():
                problems.append(f"{name}:{number}: comment after code (put it on its own line)")
            return code.rstrip(), True
        out.append(char)
        i += 1
    if modes:
        problems.append(f"{name}:{number}: unterminated string")
    return "".join(out), False


def bracket_change(code: str) -> int:
    return sum(code.count(c) for c in OPENERS) - sum(code.count(c) for c in CLOSERS)


def fmt_problems(text: str, name: str) -> list[str]:
    """What `terraform fmt` would change in `text` (hclwrite's rules), as `name:line: why`.

    Indentation follows hclwrite's formatIndent (two spaces per line that opens brackets,
    heredoc bodies untouched); `=` alignment its formatCells (a run of consecutive lines that
    each hold a whole `key = value` aligns its `=` one column after the longest key; blank
    lines, comments, block and multi-line openers end a run); spacing its formatSpaces for
    the cases written here (one space after `=`, after a comma, none inside brackets).
    Project rules on top: no tabs or trailing spaces, one final newline, no double blank
    lines, one blank line between top-level blocks, comments on their own line.
    """
    problems: list[str] = []
    if not text.endswith("\n") or text.endswith("\n\n"):
        problems.append(f"{name}:{text.count(chr(10)) + 1}: file must end with one newline")
    lines: list[Line] = []
    heredoc: str | None = None
    for number, raw in enumerate(
        text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), 1
    ):
        line = Line(number, raw)
        if "\t" in raw:
            problems.append(f"{name}:{number}: tab")
        if "\r" in raw:
            problems.append(f"{name}:{number}: carriage return")
        if raw != raw.rstrip():
            problems.append(f"{name}:{number}: trailing whitespace")
        if heredoc is not None:
            line.heredoc_body = True
            if raw.strip() == heredoc:
                heredoc = None
        else:
            line.code, line.comment = mask(raw, number, problems, name)
            opener = HEREDOC.search(line.code.rstrip())
            if opener:
                heredoc = opener[1]
                line.opens_heredoc = True
        lines.append(line)

    # Indentation (hclwrite formatIndent).
    indents: list[int] = []
    for line in lines:
        if line.heredoc_body or not line.text.strip():
            continue
        net = bracket_change(line.code)
        if net < 0:
            closed = -net
            while closed > 0 and indents:
                if closed >= indents[-1]:
                    closed -= indents.pop()
                else:
                    indents[-1] -= closed
                    closed = 0
        expected = 2 * len(indents)
        if net > 0:
            indents.append(net)
        actual = len(line.text) - len(line.text.lstrip(" "))
        if actual != expected:
            problems.append(f"{name}:{line.number}: indented {actual}, expected {expected}")

    # `=` alignment (hclwrite formatCells) and spacing.
    run: list[tuple[Line, int]] = []

    def close_run() -> None:
        if run:
            column = max(len(line.code[:at].rstrip()) for line, at in run) + 1
            for line, at in run:
                if at != column:
                    problems.append(
                        f"{name}:{line.number}: '=' at column {at + 1}, expected {column + 1}"
                    )
        run.clear()

    for line in lines:
        if line.heredoc_body:
            close_run()
            continue
        code = line.code
        body = code.lstrip(" ")
        equals = LONE_EQUALS.search(code)
        padding_end = -1  # where alignment padding may end: at the `=` of a `key = value`
        if (
            equals is not None
            and equals.start() > len(code) - len(body)
            and bracket_change(code[equals.start() :]) + line.opens_heredoc == 0
        ):
            run.append((line, equals.start()))
            padding_end = equals.start()
        else:
            close_run()
        if equals is not None:
            after = code[equals.end() :]
            if after and (not after.startswith(" ") or after.startswith("  ")):
                problems.append(f"{name}:{line.number}: one space after '='")
        for gap in re.finditer(r"(?<=\S)  +(?=\S)", body):
            if gap.end() + len(code) - len(body) != padding_end:
                problems.append(f"{name}:{line.number}: several spaces between tokens")
        if re.search(r"[\[(] | [\])]| ,|,(?=\S)", body):
            problems.append(f"{name}:{line.number}: spacing around a bracket or comma")
    close_run()

    # Blank lines.
    for previous, line in itertools.pairwise(lines):
        if not previous.text.strip() and not line.text.strip() and not line.heredoc_body:
            problems.append(f"{name}:{line.number}: two blank lines in a row")
        if previous.text == "}" and not previous.heredoc_body and line.text.strip():
            problems.append(f"{name}:{line.number}: blank line needed between top-level blocks")
    if lines and not lines[0].text.strip():
        problems.append(f"{name}:1: blank first line")
    return problems


def test_module_files_are_canonically_formatted() -> None:
    problems = [
        problem
        for path in sorted(MODULE.glob("*.tf"))
        for problem in fmt_problems(
            path.read_text(), str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
        )
    ]
    assert problems == []


GOOD = """\
# A comment, then a block.
resource "aws_instance" "x" {
  count         = var.on ? 1 : 0
  instance_type = "t3.small"
  tags          = { Name = "a=b, c" }

  user_data = <<-EOT
    key=value
      indented = as written
  EOT

  condition = var.x == "y" && length(var.z) >= 2
  arn       = "${replace(aws_msk_cluster.this[0].arn, ":cluster/", ":topic/")}/*"
  list = [
    "one",
    "two",
  ]

  nested {
    a   = 1
    bcd = [for i in range(3) : i]
  }
}

output "x" {
  value = (
    var.on
    ? "yes"
    : "no"
  )
}
"""

BAD = (
    'resource "aws_instance" "x" {\n'  # 1
    "  count = 1\n"  # 2: not aligned with line 3
    '  instance_type = "t3.small"\n'  # 3
    "   ami           = var.ami\n"  # 4: indented 3
    "\tmonitoring = true\n"  # 5: tab (and indented 0)
    "  tags  =  {}  \n"  # 6: two spaces after '=', trailing spaces
    '  list = [ "a","b" ]\n'  # 7: spaces inside brackets, no space after comma
    "  subnet_id = x # why\n"  # 8: comment after code
    "\n"  # 9
    "\n"  # 10: second blank line
    "}\n"  # 11
    'output "y" {\n'  # 12: no blank line after the block above
    "  value = 1\n"  # 13
    "}"  # 14: no final newline
)


def test_the_format_check_accepts_canonical_hcl() -> None:
    assert fmt_problems(GOOD, "good.tf") == []
    hcl2.loads(GOOD)  # and it is HCL at all


def test_the_format_check_reports_each_problem_with_its_line() -> None:
    problems = fmt_problems(BAD, "bad.tf")
    for expected in (
        "bad.tf:2: '=' at column 9, expected 17",
        "bad.tf:4: indented 3, expected 2",
        "bad.tf:5: tab",
        "bad.tf:5: indented 0, expected 2",
        "bad.tf:6: one space after '='",
        "bad.tf:6: trailing whitespace",
        "bad.tf:7: spacing around a bracket or comma",
        "bad.tf:8: comment after code (put it on its own line)",
        "bad.tf:10: two blank lines in a row",
        "bad.tf:12: blank line needed between top-level blocks",
        "bad.tf:14: file must end with one newline",
    ):
        assert expected in problems, f"{expected!r} not in {problems}"
