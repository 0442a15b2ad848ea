#!/usr/bin/env python3
"""Independent check of what taskctl-aws made: lists, with boto3 (not the
Rust SDK), every resource tagged with one taskctl environment and prints JSON.

usage: list_by_tag.py ENDPOINT REGION ENVIRONMENT_TAG_VALUE
"""
import json
import sys

import boto3
from botocore.exceptions import ClientError

endpoint, region, env = sys.argv[1:4]
kw = dict(
    endpoint_url=endpoint,
    region_name=region,
    aws_access_key_id="testing",
    aws_secret_access_key="testing",
)
ec2 = boto3.client("ec2", **kw)
eks = boto3.client("eks", **kw)
iam = boto3.client("iam", **kw)

FILTERS = [
    {"Name": "tag:managed-by", "Values": ["taskctl"]},
    {"Name": "tag:taskctl:environment", "Values": [env]},
]


def tags(items):
    return {t["Key"]: t["Value"] for t in items or []}


def gone(err):
    """Other tests delete their own resources while we list: skip those."""
    code = err.response.get("Error", {}).get("Code", "")
    return "NotFound" in code or code == "NoSuchEntity"


def ours(t):
    return t.get("managed-by") == "taskctl" and t.get("taskctl:environment") == env


out = {}

vpcs = []
for v in ec2.describe_vpcs(Filters=FILTERS)["Vpcs"]:
    t = tags(v.get("Tags"))
    if not ours(t):
        continue
    dns_support = ec2.describe_vpc_attribute(VpcId=v["VpcId"], Attribute="enableDnsSupport")
    dns_hostnames = ec2.describe_vpc_attribute(VpcId=v["VpcId"], Attribute="enableDnsHostnames")
    vpcs.append({
        "id": v["VpcId"],
        "cidr": v["CidrBlock"],
        "dns_support": dns_support["EnableDnsSupport"]["Value"],
        "dns_hostnames": dns_hostnames["EnableDnsHostnames"]["Value"],
        "resource": t.get("taskctl:resource"),
    })
out["vpcs"] = vpcs

out["subnets"] = [
    {
        "id": s["SubnetId"],
        "cidr": s["CidrBlock"],
        "zone": s["AvailabilityZone"],
        "map_public_ip": s.get("MapPublicIpOnLaunch", False),
        "tags": tags(s.get("Tags")),
    }
    for s in ec2.describe_subnets(Filters=FILTERS)["Subnets"]
    if ours(tags(s.get("Tags")))
]

out["internet_gateways"] = [
    {"id": g["InternetGatewayId"], "vpcs": [a["VpcId"] for a in g.get("Attachments", [])]}
    for g in ec2.describe_internet_gateways(Filters=FILTERS)["InternetGateways"]
    if ours(tags(g.get("Tags")))
]

out["elastic_ips"] = [
    {"id": a["AllocationId"]}
    for a in ec2.describe_addresses(Filters=FILTERS)["Addresses"]
    if ours(tags(a.get("Tags")))
]

# moto ignores tag filters here: the tags are checked below.
out["nat_gateways"] = [
    {"id": n["NatGatewayId"], "state": n["State"], "subnet": n["SubnetId"]}
    for n in ec2.describe_nat_gateways(Filters=FILTERS)["NatGateways"]
    if ours(tags(n.get("Tags"))) and n["State"] in ("pending", "available")
]

route_tables = []
for r in ec2.describe_route_tables(Filters=FILTERS)["RouteTables"]:
    t = tags(r.get("Tags"))
    if not ours(t):
        continue
    default = [x for x in r["Routes"] if x.get("DestinationCidrBlock") == "0.0.0.0/0"]
    target = None
    if default:
        target = default[0].get("NatGatewayId") or default[0].get("GatewayId")
    route_tables.append({
        "id": r["RouteTableId"],
        "resource": t.get("taskctl:resource"),
        "default_target": target,
        "subnets": sorted(a["SubnetId"] for a in r.get("Associations", []) if a.get("SubnetId")),
    })
out["route_tables"] = route_tables

groups = []
for g in ec2.describe_security_groups(Filters=FILTERS)["SecurityGroups"]:
    if not ours(tags(g.get("Tags"))):
        continue
    ingress = sorted(
        f'{p["IpProtocol"]}:{p.get("FromPort")}-{p.get("ToPort")}:{r["CidrIp"]}'
        for p in g["IpPermissions"]
        for r in p.get("IpRanges", [])
    )
    egress = sorted(
        f'{p["IpProtocol"]}:{r["CidrIp"]}' for p in g["IpPermissionsEgress"] for r in p.get("IpRanges", [])
    )
    groups.append({"id": g["GroupId"], "ingress": ingress, "egress": egress})
out["security_groups"] = groups

clusters = []
for name in eks.list_clusters()["clusters"]:
    try:
        c = eks.describe_cluster(name=name)["cluster"]
    except ClientError as err:
        if gone(err):
            continue
        raise
    if not ours(c.get("tags", {})):
        continue
    groups = []
    for ng_name in eks.list_nodegroups(clusterName=name)["nodegroups"]:
        ng = eks.describe_nodegroup(clusterName=name, nodegroupName=ng_name)["nodegroup"]
        groups.append({
            "name": ng_name,
            "ami_type": ng.get("amiType"),
            "instance_types": ng.get("instanceTypes"),
            "disk_size": ng.get("diskSize"),
            "scaling": ng.get("scalingConfig"),
            "taints": ng.get("taints", []),
            "labels": ng.get("labels", {}),
        })
    clusters.append({
        "name": name,
        "version": c.get("version"),
        "status": c.get("status"),
        "endpoint": c.get("endpoint"),
        "certificate_authority": c.get("certificateAuthority", {}).get("data"),
        "subnets": sorted(c["resourcesVpcConfig"].get("subnetIds", [])),
        "node_groups": sorted(groups, key=lambda g: g["name"]),
    })
out["clusters"] = clusters

roles = []
for r in iam.list_roles(PathPrefix="/taskctl/")["Roles"]:
    try:
        t = tags(iam.list_role_tags(RoleName=r["RoleName"])["Tags"])
    except ClientError as err:
        if gone(err):
            continue
        raise
    if not ours(t):
        continue
    policies = sorted(
        p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=r["RoleName"])["AttachedPolicies"]
    )
    roles.append({"name": r["RoleName"], "policies": policies})
out["roles"] = roles

json.dump(out, sys.stdout, indent=1, sort_keys=True, default=str)
