/**
 * Unit tests of the nf_tables message encoding (ffi/nftables.ts) and of the by-hand commands
 * of mod/system/nat.ts. The expected bytes are written out from <linux/netlink.h>,
 * <linux/netfilter/nfnetlink.h> and <linux/netfilter/nf_tables.h>: nlmsghdr and nlattr
 * headers little-endian (the host order of the machines this project runs on), nfgenmsg's
 * res_id and every nf_tables u32 value big-endian, each attribute padded to 4 bytes. No root.
 */

import assert from "node:assert/strict";
import { hex, toHex } from "./_bytes.ts";
import {
  encodeBatch,
  encodeGetTableRequest,
  encodeListTablesRequest,
  masqueradeCommands,
  masqueradeExpressions,
  natTableName,
  NFT_MSG_DELTABLE,
  NFT_MSG_NEWCHAIN,
  NFT_MSG_NEWRULE,
  NFT_MSG_NEWTABLE,
  NFTA_CHAIN_HOOK,
  NFTA_RULE_EXPRESSIONS,
  parseSubnet,
  tableNames,
} from "../ffi/nftables.ts";
import { encodeMessage, NLM_F_CREATE } from "../ffi/netlink_message.ts";
import { natCommands } from "../mod/system/nat.ts";

/** The bytes of `text` as hex, for names inside expected layouts. */
function ascii(text: string): string {
  return toHex(new TextEncoder().encode(text));
}

/** The payload bytes of an attribute list, concatenated as they sit in a message. */
function concat(...parts: Uint8Array[]): string {
  return parts.map(toHex).join("");
}

Deno.test("NFT_MSG_GETTABLE: nlmsghdr, nfgenmsg of inet, NFTA_TABLE_NAME with its NUL", () => {
  assert.equal(
    toHex(encodeGetTableRequest(7, "vpn_tun0")),
    toHex(hex(`
      24000000 010a 0500 07000000 00000000
      01 00 0000
      0d00 0100 ${ascii("vpn_tun0")} 00 000000
    `)),
    "len 36; type NFNL_SUBSYS_NFTABLES<<8|GETTABLE; flags REQUEST|ACK; seq 7; family inet",
  );
});

Deno.test("NFT_MSG_GETTABLE dump: NLM_F_DUMP and no attributes", () => {
  assert.equal(
    toHex(encodeListTablesRequest(3)),
    toHex(hex("14000000 010a 0503 03000000 00000000 01 00 0000")),
  );
});

Deno.test("a batch: BEGIN with res_id NFTABLES big-endian, commands numbered after it, END", () => {
  const batch = encodeBatch(100, [
    { message: NFT_MSG_DELTABLE, flags: 0, attributes: [{ type: 1, data: hex("6100") }] },
  ]);
  assert.equal(
    toHex(batch),
    toHex(hex(`
      14000000 1000 0100 64000000 00000000  00 00 000a
      1c000000 020a 0500 65000000 00000000  01 00 0000  0600 0100 6100 0000
      14000000 1100 0100 64000000 00000000  00 00 000a
    `)),
  );
});

Deno.test("a batch's sequence numbers wrap at 2^32", () => {
  const batch = encodeBatch(0xffffffff, [
    { message: NFT_MSG_DELTABLE, flags: 0, attributes: [] },
  ]);
  assert.equal(toHex(batch.subarray(8, 12)), "ffffffff");
  assert.equal(toHex(batch.subarray(20 + 8, 20 + 12)), "00000000");
});

Deno.test("the IPv4 rule: nfproto, saddr & mask == network, oifname != TUN, masq", () => {
  const expressions = masqueradeExpressions(parseSubnet("10.8.0.0/24"), "tun0");
  const elem = "0180"; // NFTA_LIST_ELEM | NLA_F_NESTED
  const data = "0280"; // NFTA_EXPR_DATA | NLA_F_NESTED
  const expected = `
    2400 ${elem}  0900 0100 ${ascii("meta")} 00 000000  1400 ${data}
      0800 0100 00000001  0800 0200 0000000f
    2c00 ${elem}  0800 0100 ${ascii("cmp")} 00  2000 ${data}
      0800 0100 00000001  0800 0200 00000000  0c00 0380  0500 0100 02 000000
    3400 ${elem}  0c00 0100 ${ascii("payload")} 00  2400 ${data}
      0800 0100 00000001  0800 0200 00000001  0800 0300 0000000c  0800 0400 00000004
    4400 ${elem}  0c00 0100 ${ascii("bitwise")} 00  3400 ${data}
      0800 0100 00000001  0800 0200 00000001  0800 0300 00000004
      0c00 0480  0800 0100 ffffff00
      0c00 0580  0800 0100 00000000
    2c00 ${elem}  0800 0100 ${ascii("cmp")} 00  2000 ${data}
      0800 0100 00000001  0800 0200 00000000  0c00 0380  0800 0100 0a080000
    2400 ${elem}  0900 0100 ${ascii("meta")} 00 000000  1400 ${data}
      0800 0100 00000001  0800 0200 00000007
    3800 ${elem}  0800 0100 ${ascii("cmp")} 00  2c00 ${data}
      0800 0100 00000001  0800 0200 00000001  1800 0380
      1400 0100 ${ascii("tun0")} 000000000000000000000000
    1400 ${elem}  0900 0100 ${ascii("masq")} 00 000000  0400 ${data}
  `;
  assert.equal(concat(...expressions.map(wire)), toHex(hex(expected)));
});

Deno.test("the IPv6 rule: nfproto ipv6, 16 bytes at offset 8 masked with the /64", () => {
  const expressions = masqueradeExpressions(parseSubnet("fd00:8::/64"), "tun0").map(wire).map(
    toHex,
  );
  const elem = "0180";
  const data = "0280";
  assert.deepEqual(expressions.slice(1, 5), [
    toHex(hex(`2c00 ${elem}  0800 0100 ${ascii("cmp")} 00  2000 ${data}
      0800 0100 00000001  0800 0200 00000000  0c00 0380  0500 0100 0a 000000`)),
    toHex(hex(`3400 ${elem}  0c00 0100 ${ascii("payload")} 00  2400 ${data}
      0800 0100 00000001  0800 0200 00000001  0800 0300 00000008  0800 0400 00000010`)),
    toHex(hex(`5c00 ${elem}  0c00 0100 ${ascii("bitwise")} 00  4c00 ${data}
      0800 0100 00000001  0800 0200 00000001  0800 0300 00000010
      1800 0480  1400 0100 ffffffff ffffffff 00000000 00000000
      1800 0580  1400 0100 00000000 00000000 00000000 00000000`)),
    toHex(hex(`3800 ${elem}  0800 0100 ${ascii("cmp")} 00  2c00 ${data}
      0800 0100 00000001  0800 0200 00000000  1800 0380
      1400 0100 fd000008 00000000 00000000 00000000`)),
  ]);
});

Deno.test("masqueradeCommands: replace the table in one transaction, then chain and rules", () => {
  const commands = masqueradeCommands("tun0", ["10.8.0.0/24", "fd00:8::/64"]);
  assert.deepEqual(commands.map((c) => c.message), [
    NFT_MSG_NEWTABLE,
    NFT_MSG_DELTABLE,
    NFT_MSG_NEWTABLE,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWRULE,
  ]);
  assert.equal(commands[0]!.flags, NLM_F_CREATE, "no NLM_F_EXCL: an old table is no error");
  assert.equal(commands[4]!.flags, NLM_F_CREATE | 0x800, "NLM_F_APPEND: rules in order");
  const table = toHex(hex(`0d00 0100 ${ascii("vpn_tun0")} 00 000000  0800 0200 00000000`));
  assert.equal(concat(...commands[0]!.attributes.map(wire)), table);
  const chain = commands[3]!.attributes.map(wire).map(toHex);
  assert.deepEqual(chain, [
    toHex(hex(`0d00 0100 ${ascii("vpn_tun0")} 00 000000`)),
    toHex(hex(`1000 0300 ${ascii("postrouting")} 00`)),
    // NF_INET_POST_ROUTING 4, priority NF_IP_PRI_NAT_SRC 100
    toHex(hex(`1400 0480  0800 0100 00000004  0800 0200 00000064`)),
    toHex(hex(`0800 0500 00000001`)), // policy NF_ACCEPT
    toHex(hex(`0800 0700 ${ascii("nat")} 00`)),
  ]);
  const rule = commands[4]!.attributes;
  assert.equal(rule[2]!.type, NFTA_RULE_EXPRESSIONS | 0x8000);
  assert.equal(commands[3]!.attributes[2]!.type, NFTA_CHAIN_HOOK | 0x8000);
});

Deno.test("masqueradeCommands refuses bad input with the reason", () => {
  assert.throws(
    () => masqueradeCommands("tun0", ["10.8.0.1/24"]),
    /Subnet "10\.8\.0\.1\/24" has host bits set; the network is "10\.8\.0\.0\/24"/,
  );
  assert.throws(() => masqueradeCommands("tun0", []), /NAT needs 1 to 64 subnets, got 0/);
  assert.throws(() => masqueradeCommands("tun0", ["10.8.0.0"]), /missing "\/"/);
  for (const name of ["", "sixteen-bytes-xx", "a/b", "a b"]) {
    assert.throws(() => masqueradeCommands(name, ["10.8.0.0/24"]), /not a network interface name/);
  }
});

Deno.test("tableNames reads NFTA_TABLE_NAME of NFT_MSG_NEWTABLE replies only", () => {
  const reply = (type: number, name: string) => {
    const bytes = encodeMessage(type, 0, 1, hex("01000000"), [
      { type: 1, data: new TextEncoder().encode(`${name}\0`) },
    ]);
    return { type, flags: 0, seq: 1, pid: 0, payload: bytes.subarray(16) };
  };
  assert.deepEqual(tableNames([reply(0x0a00, "vpn_tun0"), reply(0x0a03, "chain")]), ["vpn_tun0"]);
});

Deno.test("natCommands: the sysctls and nft commands of the same table, shell-quoted", () => {
  assert.equal(natTableName("tun0"), "vpn_tun0");
  assert.deepEqual(natCommands("tun0", ["10.8.0.0/24", "fd00:8::/64"]), [
    "sysctl -w net.ipv4.ip_forward=1",
    "sysctl -w net.ipv6.conf.all.forwarding=1",
    "nft add table inet vpn_tun0",
    "nft 'add chain inet vpn_tun0 postrouting { type nat hook postrouting priority srcnat; policy accept; }'",
    `nft 'add rule inet vpn_tun0 postrouting ip saddr 10.8.0.0/24 oifname != "tun0" masquerade'`,
    `nft 'add rule inet vpn_tun0 postrouting ip6 saddr fd00:8::/64 oifname != "tun0" masquerade'`,
  ]);
  assert.deepEqual(natCommands("tun0", ["10.8.0.0/24"]).slice(0, 2), [
    "sysctl -w net.ipv4.ip_forward=1",
    "nft add table inet vpn_tun0",
  ]);
});

/** One attribute as it sits in a message: nlattr header, payload, padding. */
function wire(attribute: { type: number; data: Uint8Array }): Uint8Array {
  // A message with no body holds exactly the attribute after its 16-byte header.
  return encodeMessage(0, 0, 0, new Uint8Array(0), [attribute]).subarray(16);
}
