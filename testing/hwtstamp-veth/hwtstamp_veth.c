// SPDX-License-Identifier: GPL-2.0
/*
 * hwtstamp_veth: a pair of virtual Ethernet devices (hwts0, hwts1) that stamp packets "in
 * hardware", for testing programs that use SO_TIMESTAMPING hardware stamps without a NIC
 * that can. Test code only; not part of network-probe.
 *
 * A frame sent on one device is received on the other, as with veth. The devices implement
 * SIOCSHWTSTAMP/SIOCGHWTSTAMP (ndo_eth_ioctl before 6.6, ndo_hwtstamp_set/get after) and
 * report hardware stamping in get_ts_info. When enabled they stamp transmitted skbs that ask
 * for it (skb_tstamp_tx with a hardware stamp) and every received skb (skb_hwtstamps) from
 * the pair's own clock: CLOCK_REALTIME + offset_s seconds. A frame's receive stamp is its
 * departure stamp (taken when the other device transmitted it) plus delay_ns, so a round
 * trip measured on one device is delay_ns plus the peer's turnaround (the time between the
 * request's and the reply's departures); see README.md.
 *
 * Parameters (writable at run time under /sys/module/hwtstamp_veth/parameters/):
 *   offset_s           seconds added to CLOCK_REALTIME for the devices' clock (default 3600)
 *   delay_ns           nanoseconds added to every receive stamp (default 0)
 *   refuse_filter_all  SIOCSHWTSTAMP refuses HWTSTAMP_FILTER_ALL with -ERANGE although
 *                      get_ts_info advertises it (a driver quirk, for fallback tests)
 *   skip_tx_stamps     with TX on, no hardware transmit stamp is taken: the socket gets the
 *                      software one instead (stamps missing on the error queue, as drivers
 *                      that drop some under load)
 *   forget_on_down     setting a device down resets its configuration to TX off, filter
 *                      none (a driver whose reset loses it)
 *   freeze_clock       the devices' clock stands still at the instant the module was loaded
 *                      (+ offset_s): every departure stamp is that instant, so a round trip
 *                      measured with hardware stamps is exactly delay_ns, whatever the peer's
 *                      turnaround
 */

#include <linux/module.h>
#include <linux/netdevice.h>
#include <linux/rtnetlink.h>
#include <linux/etherdevice.h>
#include <linux/ethtool.h>
#include <linux/net_tstamp.h>
#include <linux/skbuff.h>
#include <linux/timekeeping.h>
#include <linux/uaccess.h>
#include <linux/version.h>

static long offset_s = 3600;
module_param(offset_s, long, 0644);
MODULE_PARM_DESC(offset_s, "Seconds the devices' clock runs ahead of CLOCK_REALTIME");

static ulong delay_ns;
module_param(delay_ns, ulong, 0644);
MODULE_PARM_DESC(delay_ns, "Nanoseconds added to every receive stamp (simulated one-way delay)");

static bool refuse_filter_all;
module_param(refuse_filter_all, bool, 0644);
MODULE_PARM_DESC(refuse_filter_all, "Refuse HWTSTAMP_FILTER_ALL in SIOCSHWTSTAMP with -ERANGE");

static bool skip_tx_stamps;
module_param(skip_tx_stamps, bool, 0644);
MODULE_PARM_DESC(skip_tx_stamps, "Take no hardware transmit stamp although TX is on");

static bool forget_on_down;
module_param(forget_on_down, bool, 0644);
MODULE_PARM_DESC(forget_on_down, "Setting a device down resets its stamping configuration");

static bool freeze_clock;
module_param(freeze_clock, bool, 0644);
MODULE_PARM_DESC(freeze_clock, "The devices' clock stands still at the module's load time");

/* CLOCK_REALTIME when the module was loaded, the frozen clock's reading (without offset_s). */
static ktime_t loaded_at;

struct hwts_priv {
	struct net_device *peer;
	/* Current configuration; written under RTNL, read locklessly on the data path. */
	int tx_type;
	int rx_filter;
	atomic_long_t tx_packets, tx_bytes, rx_packets, rx_bytes, dropped;
};

static struct net_device *hwts_devs[2];

static ktime_t hwts_clock(void)
{
	ktime_t now = READ_ONCE(freeze_clock) ? loaded_at : ktime_get_real();

	return ktime_add(now, ktime_set(READ_ONCE(offset_s), 0));
}

static netdev_tx_t hwts_xmit(struct sk_buff *skb, struct net_device *dev)
{
	struct hwts_priv *priv = netdev_priv(dev);
	struct net_device *peer = priv->peer;
	struct hwts_priv *peer_priv = netdev_priv(peer);
	unsigned int len = skb->len;
	ktime_t departure = hwts_clock();

	/* The shared info is rewritten below (receive stamp, flags): own it. */
	if (skb_unclone(skb, GFP_ATOMIC))
		goto drop;

	if ((skb_shinfo(skb)->tx_flags & SKBTX_HW_TSTAMP) &&
	    READ_ONCE(priv->tx_type) == HWTSTAMP_TX_ON && !READ_ONCE(skip_tx_stamps)) {
		struct skb_shared_hwtstamps stamp = { .hwtstamp = departure };

		skb_shinfo(skb)->tx_flags |= SKBTX_IN_PROGRESS;
		skb_tstamp_tx(skb, &stamp);
	}
	/* The software transmit stamp (skipped by the core when a hardware one is in progress). */
	skb_tx_timestamp(skb);
	skb_shinfo(skb)->tx_flags &= ~(SKBTX_HW_TSTAMP | SKBTX_IN_PROGRESS);

	if (READ_ONCE(peer_priv->rx_filter) == HWTSTAMP_FILTER_ALL)
		skb_hwtstamps(skb)->hwtstamp =
			ktime_add_ns(departure, READ_ONCE(delay_ns));
	else
		skb_hwtstamps(skb)->hwtstamp = 0;

	if (!(peer->flags & IFF_UP) || dev_forward_skb(peer, skb) != NET_RX_SUCCESS) {
		/* dev_forward_skb frees the skb it refuses. */
		if (!(peer->flags & IFF_UP))
			kfree_skb(skb);
		atomic_long_inc(&priv->dropped);
		return NETDEV_TX_OK;
	}
	atomic_long_inc(&priv->tx_packets);
	atomic_long_add(len, &priv->tx_bytes);
	atomic_long_inc(&peer_priv->rx_packets);
	atomic_long_add(len, &peer_priv->rx_bytes);
	return NETDEV_TX_OK;

drop:
	kfree_skb(skb);
	atomic_long_inc(&priv->dropped);
	return NETDEV_TX_OK;
}

static int hwts_open(struct net_device *dev)
{
	struct hwts_priv *priv = netdev_priv(dev);

	if (priv->peer->flags & IFF_UP) {
		netif_carrier_on(dev);
		netif_carrier_on(priv->peer);
	}
	return 0;
}

static int hwts_stop(struct net_device *dev)
{
	struct hwts_priv *priv = netdev_priv(dev);

	netif_carrier_off(dev);
	netif_carrier_off(priv->peer);
	if (READ_ONCE(forget_on_down)) {
		WRITE_ONCE(priv->tx_type, HWTSTAMP_TX_OFF);
		WRITE_ONCE(priv->rx_filter, HWTSTAMP_FILTER_NONE);
	}
	return 0;
}

static void hwts_get_stats64(struct net_device *dev, struct rtnl_link_stats64 *stats)
{
	struct hwts_priv *priv = netdev_priv(dev);

	stats->tx_packets = atomic_long_read(&priv->tx_packets);
	stats->tx_bytes = atomic_long_read(&priv->tx_bytes);
	stats->rx_packets = atomic_long_read(&priv->rx_packets);
	stats->rx_bytes = atomic_long_read(&priv->rx_bytes);
	stats->tx_dropped = atomic_long_read(&priv->dropped);
}

/* Validates and applies a configuration, as a driver with these modes would. */
static int hwts_apply(struct net_device *dev, int tx_type, int rx_filter)
{
	struct hwts_priv *priv = netdev_priv(dev);

	switch (tx_type) {
	case HWTSTAMP_TX_OFF:
	case HWTSTAMP_TX_ON:
		break;
	default:
		return -ERANGE;
	}
	switch (rx_filter) {
	case HWTSTAMP_FILTER_NONE:
		break;
	case HWTSTAMP_FILTER_ALL:
		if (READ_ONCE(refuse_filter_all))
			return -ERANGE;
		break;
	default:
		return -ERANGE;
	}
	WRITE_ONCE(priv->tx_type, tx_type);
	WRITE_ONCE(priv->rx_filter, rx_filter);
	return 0;
}

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
static int hwts_hwtstamp_get(struct net_device *dev, struct kernel_hwtstamp_config *config)
{
	struct hwts_priv *priv = netdev_priv(dev);

	config->flags = 0;
	config->tx_type = priv->tx_type;
	config->rx_filter = priv->rx_filter;
	return 0;
}

static int hwts_hwtstamp_set(struct net_device *dev, struct kernel_hwtstamp_config *config,
			     struct netlink_ext_ack *extack)
{
	return hwts_apply(dev, config->tx_type, config->rx_filter);
}
#else
static int hwts_eth_ioctl(struct net_device *dev, struct ifreq *ifr, int cmd)
{
	struct hwts_priv *priv = netdev_priv(dev);
	struct hwtstamp_config config;
	int err;

	switch (cmd) {
	case SIOCSHWTSTAMP:
		if (copy_from_user(&config, ifr->ifr_data, sizeof(config)))
			return -EFAULT;
		err = hwts_apply(dev, config.tx_type, config.rx_filter);
		if (err)
			return err;
		break;
	case SIOCGHWTSTAMP:
		config.flags = 0;
		config.tx_type = priv->tx_type;
		config.rx_filter = priv->rx_filter;
		break;
	default:
		return -EOPNOTSUPP;
	}
	return copy_to_user(ifr->ifr_data, &config, sizeof(config)) ? -EFAULT : 0;
}
#endif

static const struct net_device_ops hwts_netdev_ops = {
	.ndo_open = hwts_open,
	.ndo_stop = hwts_stop,
	.ndo_start_xmit = hwts_xmit,
	.ndo_get_stats64 = hwts_get_stats64,
	.ndo_set_mac_address = eth_mac_addr,
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
	.ndo_hwtstamp_get = hwts_hwtstamp_get,
	.ndo_hwtstamp_set = hwts_hwtstamp_set,
#else
	.ndo_eth_ioctl = hwts_eth_ioctl,
#endif
};

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
static int hwts_get_ts_info(struct net_device *dev, struct kernel_ethtool_ts_info *info)
#else
static int hwts_get_ts_info(struct net_device *dev, struct ethtool_ts_info *info)
#endif
{
	info->so_timestamping = SOF_TIMESTAMPING_TX_HARDWARE | SOF_TIMESTAMPING_RX_HARDWARE |
				SOF_TIMESTAMPING_RAW_HARDWARE | SOF_TIMESTAMPING_TX_SOFTWARE |
				SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE;
	/* No PTP clock device: the stamps' clock is CLOCK_REALTIME + offset_s. */
	info->phc_index = -1;
	info->tx_types = BIT(HWTSTAMP_TX_OFF) | BIT(HWTSTAMP_TX_ON);
	info->rx_filters = BIT(HWTSTAMP_FILTER_NONE) | BIT(HWTSTAMP_FILTER_ALL);
	return 0;
}

static const struct ethtool_ops hwts_ethtool_ops = {
	.get_link = ethtool_op_get_link,
	.get_ts_info = hwts_get_ts_info,
};

static void hwts_setup(struct net_device *dev)
{
	ether_setup(dev);
	dev->netdev_ops = &hwts_netdev_ops;
	dev->ethtool_ops = &hwts_ethtool_ops;
	dev->priv_flags |= IFF_NO_QUEUE;
	dev->priv_flags &= ~IFF_TX_SKB_SHARING;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
	/* 6.12 made lockless transmit a netdev flag (NETIF_F_LLTX is gone). */
	dev->lltx = true;
#else
	dev->features |= NETIF_F_LLTX;
#endif
	dev->needs_free_netdev = true;
	eth_hw_addr_random(dev);
}

static int __init hwts_init(void)
{
	int i, err;

	loaded_at = ktime_get_real();
	for (i = 0; i < 2; i++) {
		hwts_devs[i] = alloc_netdev(sizeof(struct hwts_priv), i ? "hwts1" : "hwts0",
					    NET_NAME_PREDICTABLE, hwts_setup);
		if (!hwts_devs[i]) {
			err = -ENOMEM;
			goto free;
		}
	}
	for (i = 0; i < 2; i++) {
		struct hwts_priv *priv = netdev_priv(hwts_devs[i]);

		priv->peer = hwts_devs[1 - i];
		priv->tx_type = HWTSTAMP_TX_OFF;
		priv->rx_filter = HWTSTAMP_FILTER_NONE;
	}
	rtnl_lock();
	for (i = 0; i < 2; i++) {
		netif_carrier_off(hwts_devs[i]);
		err = register_netdevice(hwts_devs[i]);
		if (err)
			break;
	}
	if (err && i == 1)
		unregister_netdevice(hwts_devs[0]);
	rtnl_unlock();
	if (!err)
		return 0;
	/* Registered devices are freed by unregistering (needs_free_netdev); the rest here. */
	for (; i < 2; i++)
		free_netdev(hwts_devs[i]);
	return err;
free:
	while (i--)
		free_netdev(hwts_devs[i]);
	return err;
}

static void __exit hwts_exit(void)
{
	LIST_HEAD(list);

	rtnl_lock();
	unregister_netdevice_queue(hwts_devs[0], &list);
	unregister_netdevice_queue(hwts_devs[1], &list);
	unregister_netdevice_many(&list);
	rtnl_unlock();
}

module_init(hwts_init);
module_exit(hwts_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Virtual Ethernet pair with simulated hardware timestamps (test device)");
