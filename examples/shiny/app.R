# A small Shiny app for the procyard demo, written as for any Shiny host: it
# does not know about procyard. procyard runs it in a sandbox on the
# worker's port (see "R apps" in the README).
library(shiny)

ui <- fluidPage(
  titlePanel("Hello from procyard"),
  sliderInput("n", "Sample size", min = 10, max = 1000, value = 200),
  plotOutput("hist")
)

server <- function(input, output, session) {
  output$hist <- renderPlot(hist(rnorm(input$n), main = "rnorm", col = "steelblue"))
}

message("app.R: R ", getRversion(), " as uid ", system("id -u", intern = TRUE))
shinyApp(ui, server)
