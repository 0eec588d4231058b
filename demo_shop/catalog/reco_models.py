"""How the demo shop's cart and order lines map to reco-plugin events
(``RECO_PLUGIN["CART_MODEL"]`` / ``["ORDER_LINE_MODEL"]``). Plain data: the
settings import it before Django is set up."""

CART_MODEL = {
    "MODEL": "catalog.CartLine",
    "PRODUCT": "product_id",
    "QUANTITY": "quantity",
    "PRICE": "unit_price",
    "USER": "cart.user_id",
}
ORDER_LINE_MODEL = {
    "MODEL": "catalog.OrderLine",
    "PRODUCT": "product_id",
    "QUANTITY": "quantity",
    "PRICE": "unit_price",
    "USER": "order.user_id",
    # reco_import: when each line was bought, and its order (a guest's lines)
    "TIME": "order.placed",
    "ORDER": "order_id",
}
