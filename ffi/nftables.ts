/**
 * nf_tables through netlink, without the `nft` binary or libnftnl: the one table a VPN server
 * needs to masquerade its clients, `table inet vpn_<tun>` with a `postrouting` NAT chain, and
 * the calls to ask for it and delete it.
 *
 * nf_tables speaks nfnetlink (NETLINK_NETFILTER): every message is a `struct nlmsghdr` whose
 * type is `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*`, a `struct nfgenmsg` (family, version,
 * res_id) and netlink attributes, nested for chains' hooks and rules' expressions
 * (<linux/netfilter/nfnetlink.h>, <linux/netfilter/nf_tables.h>). Changes travel in a batch
 * (NFNL_MSG_BATCH_BEGIN .. NFNL_MSG_BATCH_END) that the kernel applies as one transaction: all
 * of it or nothing. Unlike rtnetlink, nf_tables reads its 32-bit attributes in network byte
 * order; the attribute headers themselves stay in host order.
 *
 * A rule is a list of expressions run on registers: load a packet field or meta datum into a
 * register, compare it, and a last expression that acts (here `masq`). The encoders are pure
 * functions, tested byte for byte without root; {@linkcode Nftables} sends them.
 *
 * @example The rules `Nftables.installMasquerade` sets up, in `nft` words
 * ```text
 * table inet vpn_tun0 {
 *   chain postrouting {
 *     type nat hook postrouting priority srcnat; policy accept;
 *     meta nfproto ipv4 ip saddr 10.8.0.0/24 oifname != "tun0" masquerade
 *   }
 * }
 * ```
 *
 * @module
 */

import { IFNAMSIZ } from "./constants.ts";
import { Netlink } from "./netlink.ts";
import {
  align,
  type Attribute,
  type Cidr,
  encodeMessage,
  formatIpAddress,
  type NetlinkMessage,
  networkAddress,
  NLM_F_ACK,
  NLM_F_CREATE,
  NLM_F_DUMP,
  NLM_F_REQUEST,
  parseAttributes,
  parseCidr,
} from "./netlink_message.ts";

/** <linux/netlink.h> NETLINK_NETFILTER: the nfnetlink protocol of an AF_NETLINK socket. */
export const NETLINK_NETFILTER = 12;
/** <linux/netlink.h> NLM_F_APPEND: a new rule goes after the chain's last one. */
export const NLM_F_APPEND = 0x800;
/** <linux/netlink.h> NLA_F_NESTED: the attribute's payload is attributes. */
export const NLA_F_NESTED = 0x8000;

/** <linux/netfilter/nfnetlink.h> the subsystem, the batch markers and the version. */
export const NFNL_SUBSYS_NFTABLES = 10;
export const NFNL_MSG_BATCH_BEGIN = 16;
export const NFNL_MSG_BATCH_END = 17;
export const NFNETLINK_V0 = 0;

/** <linux/netfilter/nf_tables.h> enum nf_tables_msg_types. */
export const NFT_MSG_NEWTABLE = 0;
export const NFT_MSG_GETTABLE = 1;
export const NFT_MSG_DELTABLE = 2;
export const NFT_MSG_NEWCHAIN = 3;
export const NFT_MSG_NEWRULE = 6;

/** <linux/netfilter.h> enum nfproto: the table family and what `meta nfproto` loads. */
export const NFPROTO_INET = 1;
export const NFPROTO_IPV4 = 2;
export const NFPROTO_IPV6 = 10;
/** <linux/netfilter.h> NF_INET_POST_ROUTING hook and NF_ACCEPT verdict. */
export const NF_INET_POST_ROUTING = 4;
export const NF_ACCEPT = 1;
/** <linux/netfilter_ipv4.h> NF_IP_PRI_NAT_SRC: the priority `nft` calls srcnat. */
export const NF_IP_PRI_NAT_SRC = 100;

/** enum nft_table_attributes. */
export const NFTA_TABLE_NAME = 1;
export const NFTA_TABLE_FLAGS = 2;
/** enum nft_chain_attributes and enum nft_hook_attributes. */
export const NFTA_CHAIN_TABLE = 1;
export const NFTA_CHAIN_NAME = 3;
export const NFTA_CHAIN_HOOK = 4;
export const NFTA_CHAIN_POLICY = 5;
export const NFTA_CHAIN_TYPE = 7;
export const NFTA_HOOK_HOOKNUM = 1;
export const NFTA_HOOK_PRIORITY = 2;
/** enum nft_rule_attributes, nft_list_attributes, nft_expr_attributes, nft_data_attributes. */
export const NFTA_RULE_TABLE = 1;
export const NFTA_RULE_CHAIN = 2;
export const NFTA_RULE_EXPRESSIONS = 4;
export const NFTA_LIST_ELEM = 1;
export const NFTA_EXPR_NAME = 1;
export const NFTA_EXPR_DATA = 2;
export const NFTA_DATA_VALUE = 1;
/** enum nft_meta_attributes and the two keys used. */
export const NFTA_META_DREG = 1;
export const NFTA_META_KEY = 2;
export const NFT_META_OIFNAME = 7;
export const NFT_META_NFPROTO = 15;
/** enum nft_cmp_attributes and nft_cmp_ops. */
export const NFTA_CMP_SREG = 1;
export const NFTA_CMP_OP = 2;
export const NFTA_CMP_DATA = 3;
export const NFT_CMP_EQ = 0;
export const NFT_CMP_NEQ = 1;
/** enum nft_payload_attributes and NFT_PAYLOAD_NETWORK_HEADER. */
export const NFTA_PAYLOAD_DREG = 1;
export const NFTA_PAYLOAD_BASE = 2;
export const NFTA_PAYLOAD_OFFSET = 3;
export const NFTA_PAYLOAD_LEN = 4;
export const NFT_PAYLOAD_NETWORK_HEADER = 1;
/** enum nft_bitwise_attributes. */
export const NFTA_BITWISE_SREG = 1;
export const NFTA_BITWISE_DREG = 2;
export const NFTA_BITWISE_LEN = 3;
export const NFTA_BITWISE_MASK = 4;
export const NFTA_BITWISE_XOR = 5;
/** NFT_REG_1: a 16-byte data register, wide enough for an IPv6 address and an ifname. */
export const NFT_REG_1 = 1;

/** The source address's offset in the IPv4 (RFC 791) and IPv6 (RFC 8200) header. */
const IPV4_SADDR_OFFSET = 12;
const IPV6_SADDR_OFFSET = 8;
/** The one chain of the table. */
export const NAT_CHAIN = "postrouting";
/** sizeof(struct nfgenmsg). */
const NFGENMSG_LEN = 4;
/** sizeof(struct nlattr). */
const NLA_HDRLEN = 4;
/** The most subnets one table masquerades: one rule each, all in one batch. */
const MAX_SUBNETS = 64;

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// ---------------------------------------------------------------------------------------------
// Attributes

/** A u32 attribute in network byte order, as nf_tables reads them (`nla_get_be32`). */
function be32(type: number, value: number): Attribute {
  const data = new Uint8Array(4);
  new DataView(data.buffer).setUint32(0, value >>> 0, false);
  return { type, data };
}

/** A NUL-terminated string attribute (NLA_STRING and NLA_NUL_STRING both take it). */
function str(type: number, text: string): Attribute {
  const bytes = new TextEncoder().encode(text);
  const data = new Uint8Array(bytes.length + 1);
  data.set(bytes);
  return { type, data };
}

/** Attributes as consecutive `struct nlattr` headers and payloads, each padded to 4 bytes. */
export function encodeAttributes(attributes: readonly Attribute[]): Uint8Array<ArrayBuffer> {
  let length = 0;
  for (const attribute of attributes) length += align(NLA_HDRLEN + attribute.data.length);
  const bytes = new Uint8Array(length);
  const fields = new DataView(bytes.buffer);
  let offset = 0;
  for (const attribute of attributes) {
    fields.setUint16(offset, NLA_HDRLEN + attribute.data.length, HOST_LITTLE_ENDIAN); // nla_len
    fields.setUint16(offset + 2, attribute.type, HOST_LITTLE_ENDIAN); // nla_type
    bytes.set(attribute.data, offset + NLA_HDRLEN);
    offset += align(NLA_HDRLEN + attribute.data.length);
  }
  return bytes;
}

/** An attribute whose payload is `children`, flagged NLA_F_NESTED. */
function nest(type: number, children: readonly Attribute[]): Attribute {
  return { type: type | NLA_F_NESTED, data: encodeAttributes(children) };
}

/** struct nft_data with a plain value: `NFTA_DATA_VALUE` inside the attribute `type`. */
function dataValue(type: number, value: Uint8Array): Attribute {
  return nest(type, [{ type: NFTA_DATA_VALUE, data: value }]);
}

/** One element of a rule's expression list: its name and its own attributes. */
function expression(name: string, data: readonly Attribute[]): Attribute {
  return nest(NFTA_LIST_ELEM, [str(NFTA_EXPR_NAME, name), nest(NFTA_EXPR_DATA, data)]);
}

function metaLoad(key: number): Attribute {
  return expression("meta", [be32(NFTA_META_DREG, NFT_REG_1), be32(NFTA_META_KEY, key)]);
}

function compare(op: number, value: Uint8Array): Attribute {
  return expression("cmp", [
    be32(NFTA_CMP_SREG, NFT_REG_1),
    be32(NFTA_CMP_OP, op),
    dataValue(NFTA_CMP_DATA, value),
  ]);
}

// ---------------------------------------------------------------------------------------------
// Messages

/** One nf_tables command of a batch: its NFT_MSG_* type, extra nlmsg_flags and attributes. */
export interface NftCommand {
  /** NFT_MSG_NEWTABLE, NFT_MSG_DELTABLE, ... */
  message: number;
  /** Flags besides NLM_F_REQUEST and NLM_F_ACK, e.g. NLM_F_CREATE. */
  flags: number;
  /** The message's attributes. */
  attributes: Attribute[];
}

/** `struct nfgenmsg { __u8 nfgen_family; __u8 version; __be16 res_id; }`. */
function nfgenmsg(family: number, resId: number): Uint8Array {
  const body = new Uint8Array(NFGENMSG_LEN);
  body[0] = family;
  body[1] = NFNETLINK_V0;
  new DataView(body.buffer).setUint16(2, resId, false);
  return body;
}

/**
 * The commands, wrapped in NFNL_MSG_BATCH_BEGIN and NFNL_MSG_BATCH_END, as one buffer for one
 * send(). The begin marker has `firstSeq`, the commands the numbers after it, each with
 * NLM_F_ACK: the kernel then acknowledges each, and the last acknowledgement ends the answer
 * ({@linkcode Netlink.request} with `commands.length + 1` numbers). The end marker is never
 * acknowledged (older kernels ignore NLM_F_ACK on it) and reuses the begin's number. A
 * failure of the transaction as a whole (e.g. EPERM, or a subsystem that is missing) is
 * reported against the begin marker.
 */
export function encodeBatch(
  firstSeq: number,
  commands: readonly NftCommand[],
): Uint8Array<ArrayBuffer> {
  const marker = (type: number) =>
    encodeMessage(type, NLM_F_REQUEST, firstSeq, nfgenmsg(0, NFNL_SUBSYS_NFTABLES));
  const messages = [
    marker(NFNL_MSG_BATCH_BEGIN),
    ...commands.map((command, i) =>
      encodeMessage(
        (NFNL_SUBSYS_NFTABLES << 8) | command.message,
        NLM_F_REQUEST | NLM_F_ACK | command.flags,
        (firstSeq + 1 + i) >>> 0,
        nfgenmsg(NFPROTO_INET, 0),
        command.attributes,
      )
    ),
    marker(NFNL_MSG_BATCH_END),
  ];
  const batch = new Uint8Array(messages.reduce((sum, message) => sum + message.length, 0));
  let offset = 0;
  for (const message of messages) {
    batch.set(message, offset);
    offset += message.length;
  }
  return batch;
}

/** NFT_MSG_GETTABLE of `inet <table>`: answered by an NFT_MSG_NEWTABLE, or ENOENT. */
export function encodeGetTableRequest(seq: number, table: string): Uint8Array<ArrayBuffer> {
  return encodeMessage(
    (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
    NLM_F_REQUEST | NLM_F_ACK,
    seq,
    nfgenmsg(NFPROTO_INET, 0),
    [str(NFTA_TABLE_NAME, table)],
  );
}

/** NFT_MSG_GETTABLE as a dump of every inet table: NFT_MSG_NEWTABLE each, then NLMSG_DONE. */
export function encodeListTablesRequest(seq: number): Uint8Array<ArrayBuffer> {
  return encodeMessage(
    (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
    NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP,
    seq,
    nfgenmsg(NFPROTO_INET, 0),
  );
}

/** NFT_MSG_DELTABLE of `inet <table>`: its chains and rules go with it. */
export function deleteTableCommand(table: string): NftCommand {
  return { message: NFT_MSG_DELTABLE, flags: 0, attributes: [str(NFTA_TABLE_NAME, table)] };
}

/** The table that masquerades for TUN `tunName`: one per TUN, so that servers do not clash. */
export function natTableName(tunName: string): string {
  return `vpn_${tunName}`;
}

/**
 * A subnet as a rule matches it: the family, and the network address with host bits zero.
 *
 * @throws {TypeError} for text that is no CIDR, or one with host bits set.
 */
export function parseSubnet(text: string): Cidr {
  const cidr = parseCidr(text);
  const network = networkAddress(cidr.bytes, cidr.prefix);
  if (!network.every((byte, i) => byte === cidr.bytes[i])) {
    throw new TypeError(
      `Subnet "${text}" has host bits set; the network is "${
        formatIpAddress(network)
      }/${cidr.prefix}"`,
    );
  }
  return cidr;
}

/** The netmask of `prefix` bits over `length` bytes. */
function netmask(prefix: number, length: number): Uint8Array {
  return networkAddress(new Uint8Array(length).fill(0xff), prefix);
}

/**
 * The expressions of `meta nfproto F ip[6] saddr SUBNET oifname != "TUN" masquerade`. The
 * family test comes first: an inet chain sees IPv4 and IPv6 packets, and offset 12 of an IPv6
 * header is the middle of its source address. `oifname` (a 16-byte string compare) rather
 * than the ifindex, so the rule stays right when the TUN device is created anew.
 */
export function masqueradeExpressions(subnet: Cidr, tunName: string): Attribute[] {
  const v4 = subnet.family === 4;
  const length = subnet.bytes.length;
  const name = new TextEncoder().encode(tunName);
  const paddedName = new Uint8Array(IFNAMSIZ);
  paddedName.set(name);
  return [
    metaLoad(NFT_META_NFPROTO),
    compare(NFT_CMP_EQ, new Uint8Array([v4 ? NFPROTO_IPV4 : NFPROTO_IPV6])),
    expression("payload", [
      be32(NFTA_PAYLOAD_DREG, NFT_REG_1),
      be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER),
      be32(NFTA_PAYLOAD_OFFSET, v4 ? IPV4_SADDR_OFFSET : IPV6_SADDR_OFFSET),
      be32(NFTA_PAYLOAD_LEN, length),
    ]),
    // dreg = (sreg & mask) ^ xor, with xor 0: the address's network part.
    expression("bitwise", [
      be32(NFTA_BITWISE_SREG, NFT_REG_1),
      be32(NFTA_BITWISE_DREG, NFT_REG_1),
      be32(NFTA_BITWISE_LEN, length),
      dataValue(NFTA_BITWISE_MASK, netmask(subnet.prefix, length)),
      dataValue(NFTA_BITWISE_XOR, new Uint8Array(length)),
    ]),
    compare(NFT_CMP_EQ, subnet.bytes),
    metaLoad(NFT_META_OIFNAME),
    compare(NFT_CMP_NEQ, paddedName),
    expression("masq", []),
  ];
}

/** Throws a TypeError unless `tunName` is an interface name (1-15 bytes, no `/`, `:`, space). */
function checkTunName(tunName: string): void {
  const bytes = new TextEncoder().encode(tunName).length;
  if (bytes < 1 || bytes >= IFNAMSIZ || /[/:\s\0]/.test(tunName)) {
    throw new TypeError(
      `"${tunName}" is not a network interface name: 1 to ${
        IFNAMSIZ - 1
      } bytes, no "/", ":" or spaces`,
    );
  }
}

/**
 * The batch commands that put `table inet vpn_<tun>` in place with one masquerade rule per
 * subnet, replacing a table of that name in the same transaction: NEWTABLE without
 * NLM_F_EXCL (no error when it exists), DELTABLE (so nothing stale survives), then NEWTABLE,
 * the NAT base chain and the rules. Either the new table is there afterwards or nothing
 * changed.
 *
 * @throws {TypeError} for a bad TUN name or subnet, or none or more than 64 subnets.
 */
export function masqueradeCommands(tunName: string, subnets: readonly string[]): NftCommand[] {
  checkTunName(tunName);
  if (subnets.length === 0 || subnets.length > MAX_SUBNETS) {
    throw new TypeError(`NAT needs 1 to ${MAX_SUBNETS} subnets, got ${subnets.length}`);
  }
  const parsed = subnets.map(parseSubnet);
  const table = natTableName(tunName);
  const tableAttributes = [str(NFTA_TABLE_NAME, table), be32(NFTA_TABLE_FLAGS, 0)];
  return [
    { message: NFT_MSG_NEWTABLE, flags: NLM_F_CREATE, attributes: tableAttributes },
    deleteTableCommand(table),
    { message: NFT_MSG_NEWTABLE, flags: NLM_F_CREATE, attributes: tableAttributes },
    {
      message: NFT_MSG_NEWCHAIN,
      flags: NLM_F_CREATE,
      attributes: [
        str(NFTA_CHAIN_TABLE, table),
        str(NFTA_CHAIN_NAME, NAT_CHAIN),
        nest(NFTA_CHAIN_HOOK, [
          be32(NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING),
          be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_NAT_SRC),
        ]),
        be32(NFTA_CHAIN_POLICY, NF_ACCEPT),
        str(NFTA_CHAIN_TYPE, "nat"),
      ],
    },
    ...parsed.map((subnet) => ({
      message: NFT_MSG_NEWRULE,
      flags: NLM_F_CREATE | NLM_F_APPEND,
      attributes: [
        str(NFTA_RULE_TABLE, table),
        str(NFTA_RULE_CHAIN, NAT_CHAIN),
        nest(NFTA_RULE_EXPRESSIONS, masqueradeExpressions(subnet, tunName)),
      ],
    })),
  ];
}

// ---------------------------------------------------------------------------------------------
// The socket

/** <asm-generic/errno-base.h> ENOENT: no such table. */
const ENOENT = 2;

/**
 * An nfnetlink socket in the network namespace of the calling thread. Needs `--allow-ffi`,
 * and CAP_NET_ADMIN in that namespace for every call (nfnetlink checks it even for reads).
 * Errors are {@linkcode ErrnoError}s (from `libc.ts`) naming the request, with the kernel's
 * extended-ACK text where it gives one.
 *
 * @example
 * ```ts ignore
 * using nft = Nftables.open();
 * nft.installMasquerade("tun0", ["10.8.0.0/24"]);
 * nft.tableExists("vpn_tun0"); // true
 * nft.deleteTable("vpn_tun0"); // true
 * ```
 */
export class Nftables implements Disposable {
  readonly #netlink: Netlink;

  private constructor(netlink: Netlink) {
    this.#netlink = netlink;
  }

  /**
   * Opens the socket.
   *
   * @throws {ErrnoError} EPROTONOSUPPORT when the kernel has no nfnetlink.
   */
  static open(): Nftables {
    return new Nftables(Netlink.open(NETLINK_NETFILTER));
  }

  /** Closes the socket; calling it again does nothing. */
  close(): void {
    this.#netlink.close();
  }

  /** Same as {@linkcode Nftables.close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * Creates `table inet vpn_<tunName>` (see {@linkcode masqueradeCommands}), replacing one of
   * that name atomically. Returns the table's name.
   */
  installMasquerade(tunName: string, subnets: readonly string[]): string {
    const commands = masqueradeCommands(tunName, subnets);
    this.#batch(`nf_tables masquerade table ${natTableName(tunName)}`, commands);
    return natTableName(tunName);
  }

  /** Deletes `table inet <table>` with all it holds; false when there was none. */
  deleteTable(table: string): boolean {
    try {
      this.#batch(`NFT_MSG_DELTABLE inet ${table}`, [deleteTableCommand(table)]);
      return true;
    } catch (error) {
      if ((error as { errno?: number }).errno === ENOENT) return false;
      throw error;
    }
  }

  /** Whether `table inet <table>` exists, by NFT_MSG_GETTABLE. */
  tableExists(table: string): boolean {
    try {
      const replies = this.#netlink.request(
        `NFT_MSG_GETTABLE inet ${table}`,
        1,
        (seq) => encodeGetTableRequest(seq, table),
      );
      return tableNames(replies).includes(table);
    } catch (error) {
      if ((error as { errno?: number }).errno === ENOENT) return false;
      throw error;
    }
  }

  /** The names of every inet table in this namespace. */
  listTables(): string[] {
    return tableNames(
      this.#netlink.request("NFT_MSG_GETTABLE dump inet", 1, encodeListTablesRequest),
    );
  }

  #batch(call: string, commands: readonly NftCommand[]): void {
    this.#netlink.request(call, commands.length + 1, (seq) => encodeBatch(seq, commands));
  }
}

/** The NFTA_TABLE_NAME of each NFT_MSG_NEWTABLE among `replies` (nfgenmsg, then attributes). */
export function tableNames(replies: readonly NetlinkMessage[]): string[] {
  return replies.flatMap((reply) => {
    if (reply.type !== ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE)) return [];
    const name = parseAttributes(reply.payload.subarray(NFGENMSG_LEN)).get(NFTA_TABLE_NAME);
    if (name === undefined) return [];
    const end = name.indexOf(0);
    return [new TextDecoder().decode(end < 0 ? name : name.subarray(0, end))];
  });
}
