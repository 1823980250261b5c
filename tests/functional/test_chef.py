"""bakery_lib.chef against a real goiardi with authentication (signed requests, 401 on a wrong key)."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from bakery_lib.chef import ChefClient, parse_knife_config
from bakery_lib.errors import ChefError, UsageError
from bakery_lib.stages.chef_cleanup import delete_identity
from devstack import GoiardiServer
from devstack._proc import free_port


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def key_lines(path: str | Path) -> list[str]:
    """The base64 body lines of a PEM key: none of them may ever appear in a message."""
    return [line for line in Path(path).read_text().splitlines() if line and not line.startswith("-----")]


@pytest.fixture(scope="module")
def admin(goiardi: GoiardiServer) -> ChefClient:
    return goiardi.client()


def test_admin_identity_is_accepted(admin: ChefClient, goiardi: GoiardiServer) -> None:
    admin.check_auth()  # goiardi's admin is a user, not a client: check_auth copes with both
    assert admin.server_url == goiardi.url
    assert "chef-validator" in admin.list_clients()


def test_wrong_key_is_rejected_with_401_and_no_key_text(goiardi: GoiardiServer) -> None:
    # A well-formed RSA key that is not admin's: goiardi must reject the signature.
    wrong_key = Path(goiardi.conf_root) / "chef-webui.pem"
    client = ChefClient(goiardi.url, "admin", str(wrong_key))
    with pytest.raises(ChefError) as info:
        client.check_auth()
    message = str(info.value)
    assert "401" in message and "rejected client admin" in message and goiardi.url in message
    for line in key_lines(wrong_key) + key_lines(goiardi.admin_key_path):
        assert line not in message


def test_validator_may_create_clients_but_not_read_nodes(goiardi: GoiardiServer, tmp_path: Path) -> None:
    name = unique("val")
    key = tmp_path / "validator.pem"
    key.write_text(goiardi.client().create_client(name, validator=True))
    validator = ChefClient(goiardi.url, name, str(key))
    validator.check_auth()
    node_key = tmp_path / "node.pem"
    node = unique("node")
    node_key.write_text(validator.create_client(node))
    ChefClient(goiardi.url, node, str(node_key)).check_auth()  # the new key works at once
    with pytest.raises(ChefError, match=r"rejected client val-\w+: 403"):
        validator.list_nodes()


def test_unreachable_server_names_the_url(goiardi: GoiardiServer) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = ChefClient(url, "admin", goiardi.admin_key_path, timeout=2)
    with pytest.raises(ChefError, match="unreachable") as info:
        client.check_auth()
    assert url in str(info.value) and "admin" in str(info.value)


def test_wrong_url_path_is_not_taken_for_success(goiardi: GoiardiServer) -> None:
    client = ChefClient(goiardi.url + "/organizations/acme", "admin", goiardi.admin_key_path)
    with pytest.raises(ChefError) as info:
        client.check_auth()
    assert "/organizations/acme" in str(info.value)


def test_missing_run_list_items(admin: ChefClient) -> None:
    cookbook, role = unique("cb"), unique("role")
    admin.upload_cookbook(cookbook)
    admin.create_role(role, [f"recipe[{cookbook}::default]"])
    admin.create_role(role, [f"recipe[{cookbook}]"])  # replacing a role is fine
    items = [f"recipe[{cookbook}::web_ami]", f"recipe[{cookbook}]", f"role[{role}]",
             "recipe[nosuchcookbook::x]", "role[nosuchrole]", f"recipe[{cookbook}@0.1.0]"]
    assert admin.missing_run_list_items(items) == ["recipe[nosuchcookbook::x]", "role[nosuchrole]"]
    assert admin.missing_run_list_items([]) == []
    with pytest.raises(ValueError, match="not a run list item"):
        admin.missing_run_list_items(["nginx"])


def test_cookbook_versions_newest_first(admin: ChefClient) -> None:
    name = unique("cb")
    assert admin.cookbook_versions(name) == []
    for version in ("1.2.0", "1.10.0", "0.9.1"):
        admin.upload_cookbook(name, version)
    assert admin.cookbook_versions(name) == ["1.10.0", "1.2.0", "0.9.1"]


def test_delete_node_and_client_true_then_false(admin: ChefClient) -> None:
    name = unique("bake-web")
    admin.create_client(name)
    admin.request("POST", "/nodes", {"name": name, "json_class": "Chef::Node", "chef_type": "node",
                                     "chef_environment": "_default", "run_list": [], "normal": {},
                                     "default": {}, "override": {}, "automatic": {}})
    assert admin.node_exists(name) and admin.client_exists(name)
    assert name in admin.list_nodes() and name in admin.list_clients()
    assert admin.delete_node(name) is True
    assert admin.delete_client(name) is True
    assert admin.delete_node(name) is False
    assert admin.delete_client(name) is False
    assert not admin.node_exists(name) and not admin.client_exists(name)
    assert name not in admin.list_nodes()


def test_knife_config_rb(goiardi: GoiardiServer, tmp_path: Path) -> None:
    chef_dir = tmp_path / ".chef"
    chef_dir.mkdir()
    (chef_dir / "admin.pem").write_bytes(Path(goiardi.admin_key_path).read_bytes())
    config = chef_dir / "config.rb"
    config.write_text(
        "# knife configuration\n"
        "current_dir = File.dirname(__FILE__)\n"
        "log_level                :info\n"
        "node_name                'admin'\n"
        'client_key               "#{current_dir}/admin.pem"\n'
        f"chef_server_url          '{goiardi.url}'\n"
        "cookbook_path            [\"#{current_dir}/../cookbooks\"]\n"
        "ssl_verify_mode          :verify_none  # self-signed in the lab\n"
    )
    settings = parse_knife_config(str(config))
    assert settings["node_name"] == "admin"
    assert settings["client_key"] == str(chef_dir / "admin.pem")
    assert settings["ssl_verify_mode"] == ":verify_none"
    client = ChefClient.from_env({}, str(config))
    assert client.client_name == "admin" and client.server_url == goiardi.url
    client.check_auth()


def test_knife_rb_relative_key_env_and_client_name(goiardi: GoiardiServer, tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "me.pem").write_bytes(Path(goiardi.admin_key_path).read_bytes())
    config = tmp_path / "knife.rb"
    config.write_text(
        "client_name \"#{ENV['KNIFE_USER']}\"\n"
        "client_key 'keys/me.pem'\n"
        f'chef_server_url "{goiardi.url}"\n'
        "validation_key File.join(current_dir, 'v.pem')\n"  # Ruby we do not run: skipped
    )
    settings = parse_knife_config(str(config), {"KNIFE_USER": "admin"})
    assert settings == {"node_name": "admin", "client_key": str(tmp_path / "keys" / "me.pem"),
                        "chef_server_url": goiardi.url}


def test_from_env_variables(goiardi: GoiardiServer) -> None:
    env = {"CHEF_SERVER_URL": goiardi.url, "CHEF_CLIENT_NAME": "admin", "CHEF_CLIENT_KEY": goiardi.admin_key_path}
    client = ChefClient.from_env(env)
    client.check_auth()


def test_from_env_errors_name_what_is_missing(goiardi: GoiardiServer, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        ChefClient.from_env({"CHEF_SERVER_URL": goiardi.url})
    assert "CHEF_CLIENT_NAME, CHEF_CLIENT_KEY not set" in str(info.value)
    assert info.value.exit_code == 2

    missing = tmp_path / "nope.pem"
    with pytest.raises(UsageError, match=f"CHEF_CLIENT_KEY {missing}: no readable key file"):
        ChefClient.from_env({"CHEF_SERVER_URL": goiardi.url, "CHEF_CLIENT_NAME": "admin",
                             "CHEF_CLIENT_KEY": str(missing)})

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LXRleHQtdGhhdC1pcy1ub3QtYS1rZXk=\n"
                       "-----END RSA PRIVATE KEY-----\n")
    with pytest.raises(UsageError) as info:
        ChefClient.from_env({"CHEF_SERVER_URL": goiardi.url, "CHEF_CLIENT_NAME": "admin",
                             "CHEF_CLIENT_KEY": str(garbage)})
    assert "not an RSA private key" in str(info.value)
    assert "c2VjcmV0" not in str(info.value)

    config = tmp_path / "config.rb"
    config.write_text("node_name 'admin'\n")
    with pytest.raises(UsageError, match=r"config\.rb: no chef_server_url, client_key setting"):
        ChefClient.from_env({}, str(config))
    with pytest.raises(UsageError, match="cannot read it"):
        ChefClient.from_env({}, str(tmp_path / "missing.rb"))


def test_cleanup_revokes_the_bake_identity_before_deleting_its_node(admin: ChefClient, goiardi: GoiardiServer,
                                                                    tmp_path: Path) -> None:
    """A chef-client still running on an instance being terminated must not re-create the node that
    cleanup deleted: the client (its key) goes first, so its late node save is refused. The instance
    tries to save its node after each delete cleanup makes, i.e. at the worst moments."""
    name = unique("bake-web")
    key = tmp_path / "client.pem"
    key.write_text(admin.create_client(name))
    instance = ChefClient(goiardi.url, name, str(key))
    node = {"name": name, "json_class": "Chef::Node", "chef_type": "node", "chef_environment": "_default",
            "run_list": [], "normal": {}, "default": {}, "override": {}, "automatic": {}}
    instance.request("POST", "/nodes", node)  # what the instance's chef-client run does
    refused: list[str] = []

    def late_save() -> None:
        try:
            if instance.node_exists(name):
                instance.request("PUT", f"/nodes/{name}", node)
            else:
                instance.request("POST", "/nodes", node)
        except ChefError as exc:
            refused.append(str(exc))

    class RacingChef:
        def delete_client(self, n: str) -> bool:
            result = admin.delete_client(n)
            late_save()
            return result

        def delete_node(self, n: str) -> bool:
            result = admin.delete_node(n)
            late_save()
            return result

    message = delete_identity(SimpleNamespace(chef=RacingChef), name)  # type: ignore[arg-type]
    assert message == f"client {name} deleted, node {name} deleted"
    assert len(refused) == 2 and all("401" in r for r in refused), refused
    assert not admin.node_exists(name) and not admin.client_exists(name)
